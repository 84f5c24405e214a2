"""A migration as earlier releases' makemigrations wrote it: a trigger whose own function
calls pgcelery's, with no dependency on pgcelery's migrations. PostgreSQL creates it before
or after pgcelery's function, so nothing stops ``migrate``."""

from tests.hand_written import writer_trigger

Migration = writer_trigger(
    "pgcelery_after_i_released",
    func="PERFORM pgcelery_notify_v1('a.B', 'a.B', 'pgcelery_after_i_released', '{}'::jsonb);"
         "\nRETURN NEW;")
