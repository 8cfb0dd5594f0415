"""Lost races for a database lock: what a client is told about them.

A deadlock's victim, a serialization failure, a lock wait that ran out, a
statement the database cancelled (its statement_timeout, mostly spent waiting
behind a lock or a slow disk): not a bug (INTERNAL) and not an outage
(`unreachable`): the same call tried again succeeds. This module reads the
errors' codes without importing a driver, so the schema's one error mapping
may use it.

Whose lock it was matters to the run executor: a run whose write to the
gateway's own store lost a race is released and resumes, but a graph's node
may meet a lock in a database of its own (its SQLite file, its PostgreSQL),
with the same codes; resumed, it would run again and meet it again, for ever.
The router marks the errors of its stores' calls (`mark_store`) as they pass
it; `from_store` reads the mark.
"""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Any

from code_hero.errors import BackendUnavailableError, CodeHeroError, ConflictError

__all__ = [
    "CONTENTION_RETRY_AFTER",
    "cancelled_by_database",
    "contention",
    "from_store",
    "lock_waited_out",
    "mark_store",
    "waited_out",
]

# A call that lost a race for a lock: neither a bug nor an outage, and the same
# call tried again succeeds. A deadlock's victim and a serialization failure are
# rolled back whole (CONFLICT); a lock wait that ran out (PostgreSQL's lock_timeout,
# SQLite's busy_timeout behind another process's write) found the database busy.
PG_CLASHES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure
PG_LOCK_TIMEOUTS = frozenset({"55P03"})  # lock_not_available
# query_canceled: the database's statement_timeout ran out (a statement stuck behind
# another session's lock, a slow disk), or an administrator's pg_cancel_backend. The
# database serves, and the same call tried again most likely goes through.
PG_CANCELLED = frozenset({"57014"})
SQLITE_LOCK_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
CONTENTION_RETRY_AFTER = 1  # seconds: the clash passes when the other transaction ends
_STORE_MARK = "_code_hero_store"  # an attribute on the exception: it passes every await


def mark_store(exc: BaseException) -> None:
    """Mark `exc` as raised by a call to one of the gateway's own stores."""
    with contextlib.suppress(AttributeError, TypeError):  # a type without a __dict__
        setattr(exc, _STORE_MARK, True)


def from_store(exc: BaseException | None) -> bool:
    """Whether `exc` was raised by a call to one of the gateway's own stores."""
    return getattr(exc, _STORE_MARK, False) is True


def lock_waited_out(exc: BaseException | None) -> bool:
    """Whether `exc` is PostgreSQL's lock_timeout running out in a call to one of the
    gateway's own stores: another session held what it needs (a LOCK TABLE, a VACUUM
    FULL, rows kept FOR UPDATE) longer than the bound."""
    return getattr(exc, "sqlstate", None) in PG_LOCK_TIMEOUTS and from_store(exc)


def waited_out(exc: BaseException | None) -> bool:
    """Whether the database ended the statement after a wait: its lock_timeout or its
    statement_timeout ran out (or it was cancelled). The same statement tried at once
    would wait as long again."""
    return getattr(exc, "sqlstate", None) in PG_LOCK_TIMEOUTS | PG_CANCELLED


def cancelled_by_database(exc: BaseException | None) -> bool:
    """Whether the database cancelled the statement (`PG_CANCELLED`): one slow by itself
    is slow again when tried again, unlike a lock wait."""
    return getattr(exc, "sqlstate", None) in PG_CANCELLED


def contention(exc: BaseException | None) -> CodeHeroError | None:
    """The error a client sees for a call that lost a race for a database lock; None
    when `exc` is no such error. The database's own text (process ids, lock names)
    stays in the log."""
    state: Any = getattr(exc, "sqlstate", None)  # psycopg's errors carry their SQLSTATE
    if state in PG_CLASHES:
        return ConflictError(
            "a concurrent change to the same data won the database's lock; "
            f"retry in {CONTENTION_RETRY_AFTER} s",
            retry_after=CONTENTION_RETRY_AFTER,
        )
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    if state in PG_CANCELLED:
        return BackendUnavailableError(
            "the database cancelled a statement of this request (its statement_timeout "
            "ran out, or an administrator cancelled it); retry in "
            f"{CONTENTION_RETRY_AFTER} s",
            CONTENTION_RETRY_AFTER,
        )
    if state in PG_LOCK_TIMEOUTS or (code is not None and code & 0xFF in SQLITE_LOCK_CODES):
        return BackendUnavailableError(
            "the database is busy: a lock this request needs is held by another "
            f"transaction; retry in {CONTENTION_RETRY_AFTER} s",
            CONTENTION_RETRY_AFTER,
        )
    return None
