"""A migration that installs a pgcelery trigger but forgot its dependency on pgcelery's."""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations

FUNC = "PERFORM pgcelery_notify_v1('a.B', 'a.B', 'pgcelery_after_i_unordered', '{}'::jsonb);"


class Migration(migrations.Migration):

    dependencies = []

    operations = [
        pgtrigger.migrations.AddTrigger(
            model_name="writer",
            trigger=pgtrigger.compiler.Trigger(
                name="pgcelery_after_i_unordered",
                sql=pgtrigger.compiler.UpsertTriggerSql(
                    func=FUNC + "\nRETURN NEW;", hash="0", operation="INSERT",
                    pgid="pgtrigger_pgcelery_after_i_unordered", table="testapp_writer",
                    when="AFTER",
                ),
            ),
        ),
    ]
