"""testapp's migration of the same name."""
import importlib

MIGRATION = "tests.testapp.migrations." + __name__.rpartition(".")[2]
Migration = importlib.import_module(MIGRATION).Migration
