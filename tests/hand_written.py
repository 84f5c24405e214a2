"""Migrations written by hand, as no makemigrations writes them: for the checks to judge."""

import pgtrigger.compiler
import pgtrigger.migrations
from django.db import migrations


def writer_trigger(name: str, **sql: str) -> type[migrations.Migration]:
    """A migration of testapp that adds trigger ``name`` to the writers' table, with no
    dependency; ``sql`` gives the trigger's ``func`` and, for a direct one, ``execute``."""

    class Migration(migrations.Migration):
        dependencies: list = []
        operations = [
            pgtrigger.migrations.AddTrigger(
                model_name="writer",
                trigger=pgtrigger.compiler.Trigger(
                    name=name,
                    sql=pgtrigger.compiler.UpsertTriggerSql(
                        hash="0", operation="INSERT", pgid=f"pgtrigger_{name}",
                        table="testapp_writer", when="AFTER", **sql,
                    ),
                ),
            ),
        ]

    return Migration
