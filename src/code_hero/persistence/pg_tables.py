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

__all__ = ["MISSING_TABLES_SQL", "TABLES", "TablesMissing", "missing_tables"]

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

# One expression (no parameters: it shares `_read_clock`'s SELECT): the names of
# `TABLES` that the session's search_path does not find, in order.
MISSING_TABLES_SQL = (
    "ARRAY(SELECT t FROM unnest(ARRAY["
    + ", ".join(f"'{name}'" for name in TABLES)
    + "]) WITH ORDINALITY AS u(t, i) WHERE to_regclass(t) IS NULL ORDER BY i)"
)


class TablesMissing(psycopg.OperationalError):
    """The database answers but lacks tables of ours: it was dropped and recreated,
    or restored without them. Down, as an unreachable database is (no SQLSTATE)."""

    def __init__(self, missing: list[str], *, repaired: bool) -> None:
        tried = "; making them again did not bring them back" if repaired else ""
        super().__init__(
            f"tables missing from the database: {', '.join(missing)} (was the database "
            f"dropped and recreated, or restored without them?){tried}"
        )
        self.missing = missing


async def missing_tables(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """The names of `TABLES` that `conn`'s database lacks."""
    cur = await conn.execute(f"SELECT {MISSING_TABLES_SQL}")
    row = await cur.fetchone()
    assert row is not None
    value = row["array"] if isinstance(row, dict) else row[0]
    return list(value)
