"""The registry on PostgreSQL: sessions from the pool the savers share, JSONB, row locks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, ClassVar

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from code_hero.errors import NotFoundError
from code_hero.persistence.migrations import POSTGRES_MIGRATIONS, Migration
from code_hero.persistence.records import (
    EventRecord,
    RunRecord,
    RunStatus,
    ThreadPurge,
    ThreadStatus,
)
from code_hero.persistence.registry.dialect import (
    EVENT_COLUMNS,
    RUN_COLUMNS,
    RUN_FIELDS,
    Row,
    Session,
    utc_now,
)
from code_hero.persistence.registry.sql import SqlRegistry

__all__ = ["PostgresRegistry"]


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """Our `?` placeholders as psycopg's `%s`; `??` is a literal `?` (the JSONB key
    operators `?&`, `?|`). No query here uses a literal %."""
    return "?".join(part.replace("?", "%s") for part in sql.split("??"))


# The thread's lock of finish_run, reading the run as it is.
_FINISH_LOCK = (
    f"SELECT {', '.join(f'r.{name}' for name in RUN_FIELDS)} FROM code_hero_runs r "
    "JOIN code_hero_threads t ON t.thread_id = r.thread_id WHERE r.run_id = ? FOR UPDATE OF t"
)

# The parameters of an insert of event rows over arrays, one array per column.
_EVENT_ARRAYS = "?::text[], ?::bigint[], ?::text[], ?::text[], ?::jsonb[], ?::timestamptz[]"


def _columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows as one list per column (the arrays of an insert over `unnest`)."""
    return [list(column) for column in zip(*rows, strict=True)]


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

    async def delete_thread(self, thread_id: str) -> tuple[bool, int]:
        # SqlRegistry's transaction (two locks, the outbox insert, three deletes) as one
        # statement: one round trip instead of eight with BEGIN and COMMIT (issue 15).
        sql, params = self._deletion(thread_id, "true")
        async with self._session() as s:
            row = (await s.fetch(f"WITH {sql}", params))[0]
        if row["queued"]:
            self._outbox_committed()
        return row["threads"] > 0, int(row["runs"])

    async def purge_idle_thread(self, thread_id: str, live_at: datetime | None) -> ThreadPurge:
        """Delete the thread's registry rows and its checkpoints (the savers' tables are in
        this database) in one statement, unless it has unfinished runs or had expired at
        `live_at`: then nothing is deleted."""
        sql, params = self._deletion(thread_id, "(SELECT ok FROM go)")
        statement = (
            "WITH go AS (SELECT busy, expired, NOT busy AND NOT expired AS ok FROM (SELECT "
            "EXISTS (SELECT 1 FROM code_hero_runs WHERE thread_id = ? "
            "AND status IN ('PENDING', 'RUNNING')) AS busy, "
            "EXISTS (SELECT 1 FROM code_hero_threads WHERE thread_id = ? "
            "AND expires_at <= ?::timestamptz) AS expired) AS now), "
            # The stock adelete_thread's three deletes (see PostgresBackend.delete_checkpoints).
            "c AS (DELETE FROM checkpoints WHERE thread_id = ? AND (SELECT ok FROM go) "
            "RETURNING 1), "
            "cb AS (DELETE FROM checkpoint_blobs WHERE thread_id = ? AND (SELECT ok FROM go)), "
            "cw AS (DELETE FROM checkpoint_writes WHERE thread_id = ? AND (SELECT ok FROM go)), "
            f"{sql}, (SELECT count(*) FROM c) AS checkpoints, "
            "(SELECT busy FROM go) AS busy, (SELECT expired FROM go) AS expired"
        )
        ids = [thread_id, thread_id, live_at, thread_id, thread_id, thread_id]
        async with self._session() as s:
            row = (await s.fetch(statement, [*ids, *params]))[0]
        if row["queued"]:
            self._outbox_committed()
        return ThreadPurge(
            busy=bool(row["busy"]),
            expired=bool(row["expired"]),
            existed=row["threads"] > 0,
            checkpoints=int(row["checkpoints"]),
            runs=int(row["runs"]),
        )

    def _deletion(self, thread_id: str, go: str) -> tuple[str, list[Any]]:
        """The common-table expressions that delete the thread's row, runs and events and
        queue its THREAD_DELETED deliveries when `go` holds, then the start of the SELECT
        that counts what they did; and their parameters.

        Every sub-statement sees the rows as they were before the statement, so the
        outbox insert still finds the thread's owner. The lock order of every writer
        is kept: the SELECT reads its sub-queries left to right, so the thread is
        locked, then its runs by id, before anything is deleted.
        """
        outbox, queued = self._thread_deleted_insert(thread_id)
        sql = (
            "t AS (SELECT thread_id FROM code_hero_threads WHERE thread_id = ? "
            f"AND {go} FOR UPDATE), "
            # Runs have a thread (a foreign key): none when the thread is not locked.
            "r AS (SELECT run_id FROM code_hero_runs WHERE thread_id = ? "
            "AND EXISTS (SELECT 1 FROM t) ORDER BY run_id FOR UPDATE), "
            f"q AS ({outbox} AND EXISTS (SELECT 1 FROM t) RETURNING 1), "
            "e AS (DELETE FROM code_hero_run_events WHERE run_id IN (SELECT run_id FROM r) "
            "RETURNING 1), "
            "dr AS (DELETE FROM code_hero_runs WHERE run_id IN (SELECT run_id FROM r) "
            "RETURNING 1), "
            "dt AS (DELETE FROM code_hero_threads WHERE thread_id IN (SELECT thread_id FROM t) "
            "RETURNING 1) "
            "SELECT (SELECT count(*) FROM t) AS locked, (SELECT count(*) FROM r) AS locked_runs, "
            "(SELECT count(*) FROM q) AS queued, (SELECT count(*) FROM e) AS events, "
            "(SELECT count(*) FROM dr) AS runs, (SELECT count(*) FROM dt) AS threads"
        )
        return sql, [thread_id, thread_id, *queued]

    async def admit_run(
        self,
        run: RunRecord,
        *,
        reject_if_busy: bool,
        events: Sequence[EventRecord] = (),
        owner: str | None = None,
        new_thread: bool = False,
    ) -> tuple[RunRecord | None, str | None]:
        # SqlRegistry's transaction in four statements instead of six or seven (issue
        # 15): BEGIN, the thread's upsert (which locks it), one statement that checks
        # the owner and the thread's unfinished runs and inserts the run and its events,
        # COMMIT (ROLLBACK when the owner differs or a busy thread refuses). The check
        # is a statement of its own after the upsert: a statement sees the rows
        # committed when it began, and it must see the runs that an admission holding
        # the lock committed meanwhile.
        ts_now = utc_now()
        params = self._run_params(run)
        if run.created_at is None:
            params[RUN_FIELDS.index("created_at")] = ts_now
        events_cte, event_arrays = "", []
        if events:
            events_cte = (
                f", e AS (INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) "
                f"SELECT * FROM unnest({_EVENT_ARRAYS}) WHERE EXISTS (SELECT 1 FROM ins))"
            )
            event_arrays = _columns([self._event_params(e) for e in events])
        admit = (
            "WITH owned AS (SELECT COALESCE(?::text IS NULL OR user_id = ?::text, false) AS ok "
            "FROM code_hero_threads WHERE thread_id = ?), "
            "busy AS (SELECT run_id FROM code_hero_runs WHERE thread_id = ? "
            "AND status IN ('PENDING', 'RUNNING') ORDER BY created_at, run_id LIMIT 1), "
            f"ins AS (INSERT INTO code_hero_runs ({RUN_COLUMNS}) "
            f"SELECT {', '.join('?' for _ in RUN_FIELDS)} WHERE (SELECT ok FROM owned) "
            "AND NOT (?::boolean AND EXISTS (SELECT 1 FROM busy)) "
            f"RETURNING {RUN_COLUMNS}){events_cte} "
            "SELECT (SELECT ok FROM owned) AS owned, (SELECT run_id FROM busy) AS busy_id, "
            "ins.* FROM (SELECT 1) AS one LEFT JOIN ins ON true"
        )
        admit_params = [owner, owner, run.thread_id, run.thread_id, *params, reject_if_busy]
        upsert, upsert_params = self._busy_thread_upsert(run, ts_now)
        async with (
            self._unique(f"a run with id {run.run_id!r}"),
            self.pool.connection() as conn,
            conn.transaction(),
        ):
            await conn.execute(_pg_sql(upsert), upsert_params)
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_pg_sql(admit), [*admit_params, *event_arrays])
            row = await cur.fetchone()
            if row is None or not row["owned"]:
                raise NotFoundError(f"no thread {run.thread_id!r}")  # rolls back
            if row["run_id"] is None:  # a busy thread refuses: the upsert rolls back
                raise psycopg.Rollback
        if row["run_id"] is None:
            return None, row["busy_id"]
        return self._run(row), row["busy_id"]

    async def finish_run(
        self, run_id: str, thread_status: ThreadStatus, **fields: Any
    ) -> tuple[RunRecord | None, bool]:
        # SqlRegistry's transaction in four statements instead of six or seven (issue
        # 15): BEGIN, the thread's lock (which reads the run as it was), one statement
        # that updates the run, inserts its webhook deliveries and sets the thread's
        # status, COMMIT. The deliveries' payload is the run as read with `fields` set.
        if "status" not in fields:  # the thread's status below needs the run's
            return await super().finish_run(run_id, thread_status, **fields)
        sets, params = self._finish_sets(fields)
        ends = RunStatus(fields["status"]).finished
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_pg_sql(_FINISH_LOCK), [run_id])
            locked = await cur.fetchall()
            if not locked:  # no such run, or its thread is being deleted, its runs with it
                return None, False
            before = self._run(locked[0])
            # A run that had ended already (this finish replayed) told its webhooks then.
            inserts = (
                [] if before.status.finished else self._run_end_inserts(replace(before, **fields))
            )
            ctes = "".join(f", d{i} AS ({sql} RETURNING 1)" for i, (sql, _) in enumerate(inserts))
            queued = " + ".join(f"(SELECT count(*) FROM d{i})" for i in range(len(inserts)))
            await cur.execute(
                _pg_sql(
                    f"WITH r AS (UPDATE code_hero_runs SET {sets} WHERE run_id = ? "
                    f"RETURNING {RUN_COLUMNS}){ctes}, "
                    # The thread takes the run's end status unless a run waits (its row
                    # is locked); this statement sees the run as it was: left out.
                    "t AS (UPDATE code_hero_threads SET status = ?, updated_at = ? "
                    "WHERE thread_id = ? AND ?::boolean AND NOT EXISTS (SELECT 1 FROM "
                    "code_hero_runs WHERE thread_id = ? AND status IN ('PENDING', 'RUNNING') "
                    "AND run_id <> ?) RETURNING 1) "
                    f"SELECT r.*, {queued or '0'} AS queued_rows, "
                    "EXISTS (SELECT 1 FROM t) AS thread_set FROM r"
                ),
                [
                    *params,
                    run_id,
                    *(value for _, statement in inserts for value in statement),
                    ThreadStatus(thread_status).value,
                    utc_now(),
                    before.thread_id,
                    ends,
                    before.thread_id,
                    run_id,
                ],
            )
            rows = await cur.fetchall()
            if not rows:
                return None, False
        if rows[0]["queued_rows"]:
            self._outbox_committed()
        return self._run(rows[0]), not rows[0]["thread_set"]

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
