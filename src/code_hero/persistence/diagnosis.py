"""What a backend's error says, in words safe for anyone: host and database names left out.

A driver's message names the server, the port, the database and the role
("connection to server at "db.internal", port 5432 failed: FATAL: database
"prod" does not exist"). Administrators and the logs get it whole; everyone
else gets `error_category(text)`, e.g. "database does not exist", and
`/healthz` gets `public_health(report)`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["CATEGORIES", "UNAVAILABLE", "error_category", "public_health"]

UNAVAILABLE = "unavailable"

# (category, what its messages contain), the first match wins: psycopg and libpq,
# psycopg-pool, sqlite3, and our own time bounds (`fallback.py`).
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "authentication failed",
        (
            "password authentication failed",
            "no password supplied",
            "authentication failed",
            "pg_hba.conf",
            r'role ".*" does not exist',
        ),
    ),
    ("database does not exist", (r'database ".*" does not exist',)),
    # The database was dropped and recreated under us, or restored without our tables.
    # (`pg_tables.FUNCTIONS`: a function of ours counts as one of them.)
    (
        "tables missing",
        (
            "tables missing from the database",
            r'relation ".*" does not exist',
            r"function code_hero_\w+\(.*\) does not exist",
        ),
    ),
    # ALTER DATABASE ... ALLOW_CONNECTIONS false: the database exists and refuses sessions.
    ("database not accepting connections", ("is not currently accepting connections",)),
    ("connection refused", ("connection refused",)),
    (
        "timeout",
        (
            "timed out",
            "timeout",
            "couldn't get a connection after",
        ),
    ),
    (
        "host not found",
        ("failed to resolve host", "could not translate host name", "name or service not known"),
    ),
    (
        "too many connections",
        (
            "too many clients",
            "remaining connection slots are reserved",
            # a CONNECTION LIMIT on the role or the database
            "too many connections for",
        ),
    ),
    (
        "server starting or stopping",
        ("the database system is starting up", "the database system is shutting down"),
    ),
    (
        "connection lost",
        (
            "server closed the connection",
            "terminating connection",
            "connection is closed",
            "connection reset",
            "broken pipe",
            "consuming input failed",
        ),
    ),
    (
        "disk full",
        (
            "database or disk is full",
            "no space left on device",
            "could not extend",
            "could not write init file",  # a new session's relation cache, at connect
        ),
    ),
    ("disk I/O error", ("disk i/o error", "i/o error")),
    ("database is locked", ("database is locked",)),
    ("cannot open database file", ("unable to open database file",)),
    ("database file is damaged", ("file is not a database", "disk image is malformed")),
    ("database file deleted or replaced", ("deleted or replaced while",)),
    ("read-only database", ("readonly database", "read-only")),
    ("outage journal full", ("outage journal is full",)),
)
_COMPILED = tuple((category, re.compile("|".join(p), re.I)) for category, p in _RULES)

CATEGORIES = frozenset({category for category, _ in _RULES} | {UNAVAILABLE})


def error_category(text: str | None) -> str | None:
    """A short, name-free category of a stored backend error; None for no error."""
    if not text:
        return None
    for category, pattern in _COMPILED:
        if pattern.search(text):
            return category
    return UNAVAILABLE


def _public_backend(entry: Mapping[str, Any]) -> dict[str, Any]:
    public = {k: v for k, v in entry.items() if k != "description"}  # the server's URL
    public["last_error"] = error_category(entry.get("last_error"))
    return public


def public_health(report: Mapping[str, Any]) -> dict[str, Any]:
    """The health report for anyone: each `last_error` as its category, no backend URLs
    nor adopted files' paths."""
    public: dict[str, Any] = dict(report)
    if isinstance(report.get("backends"), list):
        public["backends"] = [_public_backend(b) for b in report["backends"]]
    for key, value in report.items():
        if key.endswith("_checkpointer") and isinstance(value, Mapping):
            public[key] = _public_backend(value)
    # A dead replica's file: no path (where the server's disk is laid out), errors as
    # their category.
    if isinstance(report.get("adoptions"), list):
        public["adoptions"] = [
            {**a, "file": None, "last_error": error_category(a.get("last_error"))}
            for a in report["adoptions"]
        ]
    last = report.get("last_adoption")
    if isinstance(last, Mapping):
        public["last_adoption"] = {**last, "file": None, "error": error_category(last.get("error"))}
    return public
