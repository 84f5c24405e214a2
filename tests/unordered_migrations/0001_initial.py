"""A migration, written by hand, with a pgcelery trigger executing pgcelery's function
directly but without its dependency on pgcelery's migration that creates it."""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations

EXECUTE = "pgcelery_row_v1('a.B', 'a.B', 'pgcelery_after_i_unordered', '{}')"


class Migration(migrations.Migration):

    dependencies = []

    operations = [
        pgtrigger.migrations.AddTrigger(
            model_name="writer",
            trigger=pgtrigger.compiler.Trigger(
                name="pgcelery_after_i_unordered",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    execute=EXECUTE, func="RETURN NULL;", hash="0", operation="INSERT",
                    pgid="pgtrigger_pgcelery_after_i_unordered", table="testapp_writer",
                    when="AFTER",
                ),
            ),
        ),
    ]
