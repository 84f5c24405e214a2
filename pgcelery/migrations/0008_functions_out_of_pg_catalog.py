"""pgcelery's functions in the outbox's schema, out of pg_catalog.

Migrations 0005 and 0006, as first released, named pg_catalog first in the search_path
they ran with, so that a superuser created the functions in pg_catalog: ``pg_dump`` leaves
them out (a restored database's triggers then call functions that do not exist), and a
non-superuser owner could not migrate at all. This moves every pgcelery function found in
pg_catalog into the outbox's schema, and gives every ``SECURITY DEFINER`` one the fixed
search_path those migrations now set: that schema, then pg_temp (pg_catalog is searched
first, unnamed). Triggers keep calling them: they refer to functions by oid.

Frozen: the SQL below is what this migration installs, for good.
"""

from django.db import migrations

MOVE_FUNCTIONS = """
DO $$
DECLARE
    home text := (SELECT relnamespace::regnamespace::text FROM pg_class
                  WHERE oid = 'pgcelery_notification'::regclass);
    found record;
BEGIN
    FOR found IN
        SELECT p.oid::regprocedure AS signature FROM pg_proc AS p
        WHERE p.proname LIKE 'pgcelery\\_%' AND p.pronamespace = 'pg_catalog'::regnamespace
    LOOP
        EXECUTE format('ALTER FUNCTION pg_catalog.%s SET SCHEMA %s', found.signature, home);
    END LOOP;
    FOR found IN
        SELECT p.oid::regprocedure AS signature
        FROM pg_proc AS p
        WHERE p.proname LIKE 'pgcelery\\_%' AND p.pronamespace = home::regnamespace
          AND p.prosecdef
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %s, pg_temp',
                       found.signature, home);
    END LOOP;
END;
$$;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("pgcelery", "0007_keep_pending_notifications"),
    ]

    operations = [
        migrations.RunSQL(MOVE_FUNCTIONS, migrations.RunSQL.noop),
    ]
