"""A migration as earlier releases' makemigrations wrote it: a trigger whose own function
calls pgcelery's, with no dependency on pgcelery's migrations. PostgreSQL creates it before
or after pgcelery's function, so nothing stops ``migrate``."""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations

FUNC = "PERFORM pgcelery_notify_v1('a.B', 'a.B', 'pgcelery_after_i_released', '{}'::jsonb);"


class Migration(migrations.Migration):

    dependencies = []

    operations = [
        pgtrigger.migrations.AddTrigger(
            model_name="writer",
            trigger=pgtrigger.compiler.Trigger(
                name="pgcelery_after_i_released",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func=FUNC + "\nRETURN NEW;", hash="0", operation="INSERT",
                    pgid="pgtrigger_pgcelery_after_i_released", table="testapp_writer",
                    when="AFTER",
                ),
            ),
        ),
    ]
