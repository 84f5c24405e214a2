"""``PGCELERY_NOTIFICATION_FILTER``: the notifications one bridge claims, by their context.

django-pgpubsub's ``PGPUBSUB_LISTENER_FILTER`` lets a listening process take only some
notifications — in a multi-tenant system, a tenant's, by the context its writer set. Here
the bridge takes that role: its claim skips rows that do not match, and they stay pending
for a bridge that takes them. The filter is a ``Q`` on pgcelery's ``Notification`` model
(``Q(context__tenant="acme")``), or the dotted path of a class whose ``get_filter()``
returns one, as pgpubsub's ``ListenerFilterProvider``; pgpubsub's lookups through
``payload__context__`` are read as ``context__``, where pgcelery keeps the context.
"""

from __future__ import annotations

import typing
from typing import Any, Protocol

from django.core.exceptions import FieldError, ImproperlyConfigured
from django.db.models import Q
from django.utils.module_loading import import_string

SETTING = "PGCELERY_NOTIFICATION_FILTER"
#: Where django-pgpubsub kept the context, and where pgcelery does.
_PGPUBSUB_CONTEXT, _CONTEXT = "payload__context__", "context__"


class ListenerFilterProvider(Protocol):
    """django-pgpubsub's filter provider: ``PGCELERY_NOTIFICATION_FILTER`` may name one."""

    def get_filter(self) -> Q: ...


def from_setting(value: Any) -> Q | None:
    """The filter a setting's value gives, checked against the Notification model.

    Raises:
        ImproperlyConfigured: naming the setting, if the value is not a filter or names a
            field the model does not have.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = import_string(value)().get_filter()
        except (ImportError, AttributeError, TypeError) as exc:
            raise ImproperlyConfigured(
                f"{SETTING} is {value!r}, which does not lead to a class whose get_filter() "
                f"returns a Q ({exc}).") from exc
    if not isinstance(value, Q):
        raise ImproperlyConfigured(
            f"{SETTING} must be a Q on pgcelery's Notification model (e.g. "
            f"Q(context__tenant='acme')), or the dotted path of a class whose get_filter() "
            f"returns one; it is {value!r}.")
    translated = _translated(value)
    try:
        condition(translated, "default")
    except FieldError as exc:
        raise ImproperlyConfigured(f"{SETTING}: {exc}") from exc
    return translated


def condition(q: Q, database: str) -> tuple[str, list[Any]]:
    """The filter as an SQL condition on the outbox table, and its parameters."""
    from pgcelery.models import Notification

    query = Notification.objects.using(database).filter(q).query
    sql, params = query.get_compiler(using=database).compile(query.where)
    return str(sql), list(params)


def _translated(q: Q) -> Q:
    """``q`` with pgpubsub's ``payload__context__`` lookups turned to ``context__``."""
    translated = Q()
    translated.connector, translated.negated = q.connector, q.negated
    for child in q.children:
        if isinstance(child, Q):
            translated.children.append(_translated(child))
        else:
            lookup, value = typing.cast(tuple[str, Any], child)
            if lookup.startswith(_PGPUBSUB_CONTEXT):
                lookup = _CONTEXT + lookup[len(_PGPUBSUB_CONTEXT):]
            translated.children.append((lookup, value))
    return translated
