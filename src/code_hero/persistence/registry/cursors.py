"""Keyset cursors of the registry's listings: opaque to callers, checked on the way back.

A cursor is base64 of `[kind, time, key]`: the sort key of the last item of a
page (`updated_at, thread_id` of a thread, `created_at, run_id` of a run), so
the next page starts strictly after it whatever was written meanwhile.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from code_hero.errors import BadInputError
from code_hero.persistence.records import RunRecord, ThreadRecord

__all__ = ["decode_cursor", "run_cursor", "thread_cursor"]


def _encode_cursor(kind: str, at: datetime, key: str) -> str:
    raw = json.dumps([kind, at.isoformat(), key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def thread_cursor(record: ThreadRecord) -> str:
    """The keyset cursor of a thread, as `list_threads` takes it in `after`."""
    return _encode_cursor("thread", record.updated_at, record.thread_id)


def run_cursor(record: RunRecord) -> str:
    """The keyset cursor of a run, as `list_runs` takes it in `after`."""
    if record.created_at is None:
        raise ValueError(f"run {record.run_id!r} has no created_at: it was never stored")
    return _encode_cursor("run", record.created_at, record.run_id)


def decode_cursor(kind: str, cursor: str) -> tuple[datetime, str]:
    """The (time, key) a cursor of `kind` points after; BadInputError if it is not one."""
    try:
        tag, at, key = json.loads(base64.urlsafe_b64decode(cursor.encode("ascii")))
        if tag != kind or not isinstance(at, str) or not isinstance(key, str):
            raise ValueError(cursor)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadInputError(
            f"malformed cursor {cursor!r}: pass the endCursor of a previous page of {kind}s"
        ) from exc
    return when, key
