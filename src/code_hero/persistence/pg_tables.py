"""Whether the PostgreSQL database still holds the gateway's tables.

A database dropped and recreated under a running gateway (`DROP DATABASE ...
WITH (FORCE)`, `CREATE DATABASE`), or restored empty, accepts connections and
answers the probe's `SELECT`, but every statement of ours fails with
undefined_table (42P01). Without this check the probe called it healthy, the
copy-back quarantined every write of the outage into it, and the gateway served
from a database with no tables. The probe asks which of these tables are
missing (`missing_tables`, in the trip that reads the clock), and
`PostgresBackend` makes them again as at start, or raises `TablesMissing`, which
keeps the outage: runs go on on the fallback meanwhile.
"""

from __future__ import annotations

from typing import Any

import psycopg

from code_hero.persistence.migrations import POSTGRES_MIGRATIONS

__all__ = ["LEDGERS", "MISSING_TABLES_SQL", "TABLES", "TablesMissing", "missing_tables"]

# Every table a call of ours may need: the saver's and the registry's (with the
# webhooks' and the deletions' records), and both migration ledgers.
TABLES = (
    "checkpoint_migrations",
    "checkpoints",
    "checkpoint_blobs",
    "checkpoint_writes",
    "code_hero_migrations",
    "code_hero_threads",
    "code_hero_runs",
    "code_hero_run_events",
    "code_hero_deleted_threads",
    "code_hero_webhooks",
    "code_hero_webhook_deliveries",
)
# The migration ledgers: which migrations ran. One dropped alone leaves tables its
# migrations would make again (`TablesMissing` says what to do).
LEDGERS = ("checkpoint_migrations", "code_hero_migrations")

# One expression (no parameters: it shares `_read_clock`'s SELECT): the names of
# `TABLES` that the session's search_path does not find, in order.
MISSING_TABLES_SQL = (
    "ARRAY(SELECT t FROM unnest(ARRAY["
    + ", ".join(f"'{name}'" for name in TABLES)
    + "]) WITH ORDINALITY AS u(t, i) WHERE to_regclass(t) IS NULL ORDER BY i)"
)


class TablesMissing(psycopg.OperationalError):
    """The database answers but lacks tables of ours: it was dropped and recreated,
    or restored without them. Down, as an unreachable database is (no SQLSTATE).

    `repaired`: they were made again and some are still missing. `cause`: making
    them failed with this error (a schema of the search_path missing, no CREATE
    permission, a migration ledger gone while its tables are there)."""

    def __init__(
        self,
        missing: list[str],
        *,
        repaired: bool = False,
        cause: BaseException | None = None,
        note: str = "",
    ) -> None:
        if cause is not None and set(missing) <= set(LEDGERS):
            message = _ledger_missing(missing, cause)
        else:
            message = (
                f"tables missing from the database: {', '.join(missing)} (was the database "
                "dropped and recreated, or restored without them?)"
            )
            if cause is not None:
                message += f"; making them again failed: {_first_line(cause)}{note}"
            elif repaired:
                message += "; making them again did not bring them back"
        super().__init__(message)
        self.missing = missing


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _ledger_missing(missing: list[str], cause: BaseException) -> str:
    """A migration ledger dropped alone (or restored without): the tables it records
    are there, so its migrations, run from the first, fail on them. Nothing here can
    tell which ran; an operator restores it (README, When PostgreSQL is at fault)."""
    last = len(POSTGRES_MIGRATIONS) - 1
    # Under 500 characters with the type's name: `BackendSlot.last_error` keeps that.
    return (
        f"tables missing from the database: the migration ledger {', '.join(missing)} is "
        f"missing while the tables it records are there, so its migrations cannot run "
        f"again ({_first_line(cause)}). Restore it from a backup or, if the tables are at "
        f"this version: CREATE TABLE code_hero_migrations (v INTEGER PRIMARY KEY); "
        f"INSERT INTO code_hero_migrations (v) SELECT generate_series(0, {last})"
    )


async def missing_tables(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """The names of `TABLES` that `conn`'s database lacks."""
    cur = await conn.execute(f"SELECT {MISSING_TABLES_SQL}")
    row = await cur.fetchone()
    assert row is not None
    value = row["array"] if isinstance(row, dict) else row[0]
    return list(value)
