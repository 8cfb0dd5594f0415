"""The registry on PostgreSQL: sessions from the pool the savers share, JSONB, row locks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, ClassVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.migrations import POSTGRES_MIGRATIONS, Migration
from code_hero.persistence.registry.dialect import Row, Session
from code_hero.persistence.registry.sql import SqlRegistry

__all__ = ["PostgresRegistry"]


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """Our `?` placeholders as psycopg's `%s`; `??` is a literal `?` (the JSONB key
    operators `?&`, `?|`). No query here uses a literal %."""
    return "?".join(part.replace("?", "%s") for part in sql.split("??"))


class _PgSession:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_pg_sql(sql), params)
            return await cur.fetchall() if cur.description else []

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._conn.cursor() as cur:
            await cur.execute(_pg_sql(sql), params)
            return cur.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._conn.cursor() as cur:
            await cur.executemany(_pg_sql(sql), rows)


class PostgresRegistry(SqlRegistry):
    """The registry in the PostgreSQL database of the checkpoints, on an autocommit pool."""

    migrations: ClassVar[Sequence[Migration]] = POSTGRES_MIGRATIONS
    migration_lock: ClassVar[str | None] = "SELECT pg_advisory_xact_lock(?::bigint)"
    skip_locked: ClassVar[str] = " FOR UPDATE OF r SKIP LOCKED"
    for_update: ClassVar[str] = " FOR UPDATE"
    sweep_lock: ClassVar[str | None] = "SELECT pg_try_advisory_lock(?::bigint) AS taken"
    sweep_unlock: ClassVar[str | None] = "SELECT pg_advisory_unlock(?::bigint) AS released"

    duration_ms_sql: ClassVar[str] = (
        "(EXTRACT(EPOCH FROM (finished_at - started_at)) * 1000)::float8"
    )
    bucket_key_sql: ClassVar[str] = (
        "substr(to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI'), 1, {length})"
    )
    has_percentile_cont: ClassVar[bool] = True

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    @asynccontextmanager
    async def _session(self, *, atomic: bool = False) -> AsyncIterator[Session]:
        async with self.pool.connection() as conn:
            if atomic:
                async with conn.transaction():
                    yield _PgSession(conn)
            else:
                yield _PgSession(conn)

    def _json(self, value: Any) -> Any:
        return Jsonb(value)

    def _from_json(self, value: Any) -> Any:
        return value  # psycopg has already parsed json/jsonb

    def _ts(self, value: datetime) -> Any:
        return value

    def _from_ts(self, value: Any) -> datetime:
        if not isinstance(value, datetime):
            raise TypeError(f"expected a timestamptz, got {value!r}")
        return value.astimezone(UTC)

    def _contains(self, column: str, subset: Mapping[str, Any]) -> tuple[str, list[Any]]:
        return f"{column} @> ?::jsonb", [Jsonb(dict(subset))]

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def _has_keys(self, column: str, keys: Sequence[str]) -> tuple[str, list[Any]]:
        # Not backed by the GIN index: it is jsonb_path_ops (containment only), which
        # cannot answer key presence; the other conditions and the order's index narrow.
        return f"{column} ??& ?::text[]", [list(keys)]

    def _is_duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def _is_orphan(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.ForeignKeyViolation)
