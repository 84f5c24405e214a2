"""A migration, written by hand, with a pgcelery trigger executing pgcelery's function
directly but without its dependency on pgcelery's migration that creates it."""

from tests.hand_written import writer_trigger

Migration = writer_trigger(
    "pgcelery_after_i_unordered", func="RETURN NULL;",
    execute="pgcelery_row_v1('a.B', 'a.B', 'pgcelery_after_i_unordered', '{}')")
