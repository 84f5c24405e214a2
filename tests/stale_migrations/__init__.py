"""testapp's migrations before ``0005_readings``: as if the Reading model and its listener
had been declared and ``makemigrations`` not run."""
