"""Keyset cursors of the registry's listings: opaque to callers, checked on the way back.

A cursor is base64 of `[kind, time, key, order]`: the sort key of the last item
of a page (`updated_at` or `created_at` and `thread_id` of a thread,
`created_at, run_id` of a run) and the order it was made for (`UPDATED_AT:DESC`),
so the next page starts strictly after it whatever was written meanwhile, and a
cursor passed with another order is refused rather than silently misread.
Cursors of before orders existed (three items) stand for the default order.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime

import orjson

from code_hero.errors import BadInputError
from code_hero.persistence.jsonable import storable_text
from code_hero.persistence.records import (
    RunOrder,
    RunRecord,
    ThreadOrder,
    ThreadRecord,
    ThreadSortField,
)

__all__ = ["decode_cursor", "delivery_cursor", "order_tag", "run_cursor", "thread_cursor"]


def order_tag(order: ThreadOrder | RunOrder) -> str:
    """The order as a cursor records it: `FIELD:DIRECTION`."""
    field = order.field if isinstance(order, ThreadOrder) else "CREATED_AT"
    return f"{field}:{order.direction}"


_DEFAULT_TAGS = {
    "thread": order_tag(ThreadOrder()),
    "run": order_tag(RunOrder()),
}


def _encode_cursor(kind: str, at: datetime, key: str, order: str) -> str:
    # orjson: a fifth of json.dumps' time, made for every edge of a page. Its bytes are
    # json.dumps' (compact) for the ASCII ids every key is (see check_thread_id).
    # A time in UTC (every record's) orjson writes itself, as isoformat() writes it
    # (microseconds only when there are some, `+00:00`): isoformat() alone took as long
    # as the rest (a page's endCursor). A plain datetime only: orjson refuses a
    # subclass (pendulum's, freezegun's).
    plain = at.tzinfo is UTC and type(at) is datetime
    raw = orjson.dumps([kind, at if plain else at.isoformat(), key, order])
    return base64.urlsafe_b64encode(raw).decode("ascii")


def thread_cursor(record: ThreadRecord, order: ThreadOrder | None = None) -> str:
    """The keyset cursor of a thread, as `list_threads` takes it in `after` with `order`."""
    order = order or ThreadOrder()
    at = record.created_at if order.field is ThreadSortField.CREATED_AT else record.updated_at
    return _encode_cursor("thread", at, record.thread_id, order_tag(order))


def run_cursor(record: RunRecord, order: RunOrder | None = None) -> str:
    """The keyset cursor of a run, as `list_runs` takes it in `after` with `order`."""
    if record.created_at is None:
        raise ValueError(f"run {record.run_id!r} has no created_at: it was never stored")
    return _encode_cursor("run", record.created_at, record.run_id, order_tag(order or RunOrder()))


def delivery_cursor(created_at: datetime, delivery_id: str) -> str:
    """The keyset cursor of a webhook delivery (listed newest first, as runs are)."""
    return _encode_cursor("delivery", created_at, delivery_id, order_tag(RunOrder()))


def _plural(kind: str) -> str:
    return kind[:-1] + "ies" if kind.endswith("y") else kind + "s"  # deliveries, runs


def decode_cursor(kind: str, cursor: str, order: ThreadOrder | RunOrder) -> tuple[datetime, str]:
    """The (time, key) a cursor of `kind` points after; BadInputError if it is not one, or
    if it was made for another order than `order`."""
    try:
        item = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        if not isinstance(item, list) or len(item) not in (3, 4):
            raise ValueError(cursor)
        tag, at, key, made_for = (*item, _DEFAULT_TAGS.get(kind))[:4]
        if tag != kind or not isinstance(at, str) or not isinstance(key, str):
            raise ValueError(cursor)
        # A forged key or time must not reach the database: no NUL or lone surrogate
        # (PostgreSQL's text holds neither, SQLite's driver cannot encode the latter), no
        # time past year 9999 or before year 1 once in UTC (SQLite compares UTC text).
        if not storable_text(key):
            raise ValueError(cursor)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError(cursor)
        when = when.astimezone(UTC)
    except (ValueError, TypeError, OverflowError, RecursionError, binascii.Error) as exc:
        raise BadInputError(  # RecursionError: json.loads of arrays nested 100,000 deep
            f"malformed cursor {_shown(cursor)}: pass the endCursor of a previous page of "
            f"{_plural(kind)}"
        ) from exc
    wanted = order_tag(order)
    if made_for != wanted:
        raise BadInputError(
            f"this cursor belongs to a listing of {_plural(kind)} ordered {made_for}, "
            f"not {wanted}: pass the same orderBy as the page it came from"
        )
    return when, key


def _shown(cursor: str) -> str:
    """The cursor as an error quotes it: a forged one can be a megabyte long."""
    return repr(cursor) if len(cursor) <= 100 else f"{cursor[:100]!r}... ({len(cursor)} chars)"
