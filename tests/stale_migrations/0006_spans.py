"""testapp's migration of the same name, after this set's 0004: the set lacks 0005."""
import importlib

MIGRATION = "tests.testapp.migrations." + __name__.rpartition(".")[2]


class Migration(importlib.import_module(MIGRATION).Migration):
    dependencies = [
        ("pgcelery", "0006_batches_and_row_functions"),
        ("testapp", "0004_direct_trigger_functions"),
    ]
