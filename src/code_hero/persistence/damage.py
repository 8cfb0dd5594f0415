"""A damaged database file: what a client is told about it.

A SQLite file with a malformed page (a disk fault, a copy taken mid-write, a
file overwritten by another program) fails every statement that reads that
page, and only those: the rest of the file serves. It is no bug (INTERNAL,
with a traceback per request) and no outage either (`unreachable`: replaying
a fallback's journal into a damaged file is the wrong repair, and waiting does
not heal it). The client gets UNAVAILABLE with a message that says so; the
database's own text goes to the log, once per request, without a traceback.
This module reads the errors' codes without importing a driver, so the
schema's one error mapping may use it.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from code_hero.errors import BackendUnavailableError

__all__ = ["DAMAGE_RETRY_AFTER", "damage"]

SQLITE_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
PG_DAMAGE_STATES = frozenset({"XX001", "XX002"})  # data_corrupted, index_corrupted
# Seconds: nothing heals by itself, but a file restored by an administrator
# serves at once; a client polling every minute finds it then.
DAMAGE_RETRY_AFTER = 60


def damage(exc: BaseException | None) -> BackendUnavailableError | None:
    """The error a client sees for a call that read a damaged part of the database;
    None when `exc` is no such error."""
    state: Any = getattr(exc, "sqlstate", None)  # psycopg's errors carry their SQLSTATE
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    if state in PG_DAMAGE_STATES or (code is not None and code & 0xFF in SQLITE_DAMAGE_CODES):
        return BackendUnavailableError(
            "the database file is damaged: what this request needs cannot be read or "
            "written until an administrator restores the file from a backup (the "
            f"server's log has the database's own error); retry in {DAMAGE_RETRY_AFTER} s",
            DAMAGE_RETRY_AFTER,
        )
    return None
