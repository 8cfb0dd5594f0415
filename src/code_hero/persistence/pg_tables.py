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
from langgraph.checkpoint.postgres.base import BasePostgresSaver

from code_hero.persistence.migrations import POSTGRES_MIGRATIONS, PURGE_THREAD_SIGNATURE

__all__ = [
    "DATA_OBJECTS",
    "DATA_TABLES",
    "FUNCTIONS",
    "INVALID_INDEXES_SQL",
    "LEDGERS",
    "MISSING_TABLES_SQL",
    "TABLES",
    "TablesMissing",
    "ledgers_missing",
    "missing_tables",
]

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
# The tables calls read and write: one of them missing is an outage. A ledger missing
# alone is not (no call reads it): the primary serves, and `ledgers_missing` says how
# to restore it. Rerunning the migrations to make it again would not do: from the
# first, on the tables it recorded, they fail or queue behind readers for ACCESS
# EXCLUSIVE locks (an ALTER TABLE) while every later call on that table waits.
DATA_TABLES = tuple(name for name in TABLES if name not in LEDGERS)
# The functions calls run, named as the missing ones are reported, and their
# signatures (`to_regprocedure`): a thread's one-step deletion
# (`migrations.PURGE_THREAD`). Gone with the database, or alone (dropped by hand, a
# restore of the tables only) while its migration is recorded, every deletion met
# undefined_function (42883) and answered INTERNAL: missing, it is an outage as a
# table is, and the registry's set-up makes it again (`PostgresRegistry.setup`).
FUNCTIONS = {"code_hero_purge_thread()": PURGE_THREAD_SIGNATURE}
# What a call may need: one of them missing is an outage.
DATA_OBJECTS = DATA_TABLES + tuple(FUNCTIONS)

# Our tables' INVALID indexes (schema, name): a CREATE INDEX CONCURRENTLY cut short (a
# remake cancelled by the probe's timeout, a replica killed at its first start) leaves
# its index INVALID and its migration unrecorded; rerun, the migration's IF NOT EXISTS
# finds the name taken and records it done. Dropped under the set-up lock (no
# migration of ours is running then) before the migrations run, it is built again.
INVALID_INDEXES_SQL = (
    "SELECT n.nspname AS schema, c.relname AS name FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE NOT i.indisvalid AND i.indrelid IN ("
    + ", ".join(f"to_regclass('{name}')" for name in DATA_TABLES)
    + ")"
)

# One expression (no parameters: it shares `_read_clock`'s SELECT): the names of
# `TABLES`, then of `FUNCTIONS`, that the session's search_path does not find, in order.
MISSING_TABLES_SQL = (
    "ARRAY(SELECT t FROM unnest(ARRAY["
    + ", ".join(f"'{name}'" for name in TABLES)
    + "]) WITH ORDINALITY AS u(t, i) WHERE to_regclass(t) IS NULL ORDER BY i) || "
    "ARRAY(SELECT f FROM unnest(ARRAY["
    + ", ".join(f"'{name}'" for name in FUNCTIONS)
    + "], ARRAY["
    + ", ".join(f"'{signature}'" for signature in FUNCTIONS.values())
    + "]) WITH ORDINALITY AS u(f, s, i) WHERE to_regprocedure(s) IS NULL ORDER BY i)"
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


def ledgers_missing(missing: list[str]) -> str:
    """What to say of migration ledgers missing while the tables they record are there:
    the SQL restoring each as at this version (`_ledger_missing` for the registry's)."""
    counts = {
        "checkpoint_migrations": len(BasePostgresSaver.MIGRATIONS),
        "code_hero_migrations": len(POSTGRES_MIGRATIONS),
    }
    sql = "; ".join(
        f"CREATE TABLE {name} (v INTEGER PRIMARY KEY); INSERT INTO {name} (v) "
        f"SELECT generate_series(0, {counts[name] - 1})"
        for name in missing
    )
    return (
        f"the migration ledger {', '.join(missing)} is missing while the tables it records "
        "are there: the gateway serves, but cannot run its migrations (a start or an "
        "upgrade would fail). Restore it from a backup or, if the tables are at this "
        f"version: {sql}"
    )


async def missing_tables(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """The names of `TABLES` and `FUNCTIONS` that `conn`'s database lacks."""
    cur = await conn.execute(f"SELECT {MISSING_TABLES_SQL} AS missing")
    row = await cur.fetchone()
    assert row is not None
    value = row["missing"] if isinstance(row, dict) else row[0]
    return list(value)
