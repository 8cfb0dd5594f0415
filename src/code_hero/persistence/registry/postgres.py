"""The registry on PostgreSQL: sessions from the pool the savers share, JSONB, row locks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from functools import lru_cache
from types import TracebackType
from typing import Any, ClassVar, cast

import orjson
import psycopg
from psycopg.pq import ExecStatus, TransactionStatus
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from code_hero.errors import ConflictError
from code_hero.persistence import clock, jsontext
from code_hero.persistence.jsonbfloats import dumps_keeping_floats
from code_hero.persistence.migrations import (
    MIGRATION_LOCK_KEY,
    POSTGRES_MIGRATIONS,
    PURGE_THREAD,
    PURGE_THREAD_SIGNATURE,
    Migration,
)
from code_hero.persistence.pgarrays import pg_array
from code_hero.persistence.records import (
    EventRecord,
    RunRecord,
    RunStatus,
    ThreadPurge,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.persistence.registry.dialect import (
    EVENT_COLUMNS,
    RUN_COLUMNS,
    Row,
    Session,
    finite,
    utc_now,
)
from code_hero.persistence.registry.lifecycle import THREAD_READ_COLUMNS
from code_hero.persistence.registry.sql import SqlRegistry
from code_hero.persistence.unreachable import UnstorableJSON
from code_hero.persistence.webhooks import RUN_WEBHOOK_KEY, WebhookRecord

__all__ = ["PostgresRegistry"]

# json.dumps writes NaN and Infinity, which jsonb refuses (22P02): strict, and on
# that refusal the value again with each written as null, as orjson writes them.
_STRICT = json.JSONEncoder(allow_nan=False)


# orjson first, where it writes what json does: a subclass of a JSON type (a str enum),
# a datetime and a dataclass go to json (which writes the first and refuses the others),
# as do what orjson refuses (an int past 64 bits, a key not a str, a lone surrogate,
# nesting past 254 levels); NaN and infinities it writes null, as below. An eighth of
# json's CPU: about 21 values a run (events, run fields), issue 15.
_ORJSON = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)


def _jsonb_text(value: Any) -> str | bytes:
    # Each integral float written so jsonb keeps it a float (`jsonbfloats`): jsonb made
    # 1e23 the int 10**23, which a run, a resume or a client read back as one.
    return dumps_keeping_floats(value, _json_text)


def _json_text(value: Any) -> str | bytes:
    try:
        return orjson.dumps(value, option=_ORJSON)
    except TypeError:  # orjson.JSONEncodeError: json's turn, its value or its error
        pass
    try:
        return _STRICT.encode(value)
    except ValueError:  # a NaN or an infinity (a circular value fails again below)
        pass
    try:
        return _STRICT.encode(finite(value))
    except ValueError as exc:  # an int past Python's digit limit, a NaN as a key
        raise UnstorableJSON(f"not storable as JSON: {exc}") from exc


def _jsonb(value: Any) -> Jsonb:
    """`value` for a jsonb parameter: JSON PostgreSQL takes (NaN and infinities null)."""
    return Jsonb(value, dumps=_jsonb_text)


# The PostgreSQL types of EVENT_COLUMNS, for an event batch's arrays.
_EVENT_TYPES = ("text", "int8", "text", "text", "jsonb", "timestamptz")
# Events as rows of binary arrays, one per column of EVENT_COLUMNS (`_event_arrays`).
_UNNEST_EVENTS = f"unnest({', '.join(f'%b::{t}[]' for t in _EVENT_TYPES)}) AS e({EVENT_COLUMNS})"
# A run's end goes the two trips deliveries need for this long after a webhook was last
# seen (made here, or found by an end): one trip more, not one more a run (`finish_run`).
_HOOKS_REMEMBERED = 60.0
_DEADLOCK_RETRIES = 2  # a deletion PostgreSQL chose as a deadlock's victim is tried again
# ... after this long (times the try, jittered): the other transaction of the cycle was
# waiting for a lock the victim held. Tried at once, the victim could take that lock
# again before the waiter woke to it (row locks are not handed over in order), and
# deadlock again: three times in a row on a loaded machine (test_delete_races).
_DEADLOCK_BACKOFF = 0.02
# `purge_idle_thread`'s one statement (its function: migrations.PURGE_THREAD).
_PURGE = (
    "SELECT * FROM code_hero_purge_thread(?, ?::timestamptz, ?::timestamptz, ?::text, ?, ?, ?, ?)"
)


# A page of threads (`_threads_of`): THREAD_READ_COLUMNS with metadata as its JSON text,
# read as tuples. psycopg's jsonb loader is a Python call a row, as is dict_row's dict.
_THREAD_PAGE_COLUMNS = THREAD_READ_COLUMNS.replace("metadata", "metadata::text", 1)
_THREAD_STATUSES = {status.value: status for status in ThreadStatus}
_new = object.__new__


def _page_thread(row: tuple[Any, ...], codec: str | None = None) -> ThreadRecord:
    """A row of `_THREAD_PAGE_COLUMNS` as a ThreadRecord, filled in as `Dialect._thread`
    fills one (ThreadRecord has no __post_init__).

    `codec`: the session's client encoding when it is not UTF-8. psycopg's jsonb adapters
    write and read a value's bytes as UTF-8 whatever the session's encoding, while a text
    column is decoded in it; the text is made those bytes again, so a page reads what a
    read of the thread alone reads."""
    thread_id, user_id, status, metadata, created, updated, ttl, expires, token, edit = row
    if codec is not None and isinstance(metadata, str):
        metadata = metadata.encode(codec)
    record: ThreadRecord = _new(ThreadRecord)
    record.__dict__.update(
        thread_id=thread_id,
        user_id=user_id,
        status=_THREAD_STATUSES.get(status) or ThreadStatus(status),
        metadata={} if metadata == "{}" else jsontext.loads(metadata),
        created_at=created.astimezone(UTC),
        updated_at=updated.astimezone(UTC),
        ttl_seconds=ttl,
        expires_at=None if expires is None else expires.astimezone(UTC),
        deletion_token=token,
        edit_until=None if edit is None else edit.astimezone(UTC),
    )
    return record


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """Our `?` placeholders as psycopg's `%s`; `??` is a literal `?` (the JSONB key
    operators `?&`, `?|`). No query here uses a literal %."""
    return "?".join(part.replace("?", "%s") for part in sql.split("??"))


def _has_rows(cur: psycopg.AsyncCursor[Any]) -> bool:
    """Whether the statement returned rows (maybe none): `cur.description`'s test,
    without the column descriptions it builds at every call (one object a column)."""
    result = cur.pgresult
    return result is not None and (result.nfields > 0 or result.status == ExecStatus.TUPLES_OK)


class _Readers:
    """A cursor of tuple rows kept for each pooled connection, for the reads of sessions
    that are no transaction (`_PgSession.fetch_tuples`: a thread-list page's).

    A cursor run again with the same query (one string: `_pg_sql`'s) keeps psycopg's
    adaptation of its parameters and columns; a new cursor a read made it anew, twice
    (at the cursor's making and at its query): 15-25 us of CPU a page here, a third of
    psycopg's. A cursor is taken out for a read and given back after it (a second read
    on the connection meanwhile makes its own); one whose read failed is dropped. Kept
    by the connection's id, the cursor holding the connection: no reference cycle (the
    pool keeps its connections free of them), and no id reused while kept. Those of
    connections closed or broken since (the pool's discarded ones) go when a connection
    not seen before comes, and whenever more are kept than `limit`."""

    __slots__ = ("_cursors", "limit")

    def __init__(self, limit: int = 64) -> None:
        self._cursors: dict[int, psycopg.AsyncCursor[Any]] = {}
        self.limit = limit

    def take(self, conn: psycopg.AsyncConnection[Any]) -> psycopg.AsyncCursor[Any]:
        """The connection's cursor (out of the keep until given back), or a new one."""
        cur = self._cursors.pop(id(conn), None)
        if cur is not None and cur.connection is conn and not cur.closed:
            return cur
        return conn.cursor(row_factory=tuple_row)

    def give_back(self, conn: psycopg.AsyncConnection[Any], cur: psycopg.AsyncCursor[Any]) -> None:
        """Keep `cur` for the connection's next read (unless the connection is gone)."""
        if conn.closed or conn.broken:
            return
        cursors = self._cursors
        if id(conn) not in cursors:
            for key, kept in list(cursors.items()):
                if kept.connection.closed or kept.connection.broken:
                    del cursors[key]
            if len(cursors) >= self.limit:
                cursors.clear()
        cursors[id(conn)] = cur


class _Lent:
    """A session that is no transaction, on a connection lent as `pool.connection()`
    lends one (the connection's own exit, then back to the pool, its time counted),
    without the two generator context managers around it (`pool.connection` and
    `_session`'s own): each read of a thread-list page takes one."""

    __slots__ = ("_conn", "_pool", "_readers", "_since")

    def __init__(self, pool: AsyncConnectionPool[Any], readers: _Readers) -> None:
        self._pool = pool
        self._readers = readers

    async def __aenter__(self) -> _PgSession:
        self._conn = await self._pool.getconn()
        self._since = time.monotonic()
        return _PgSession(self._conn, readers=self._readers)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, pool = self._conn, self._pool
        try:
            await conn.__aexit__(exc_type, exc, tb)  # a rollback or a commit, as the pool's
        finally:
            await pool.putconn(conn)
            pool._stats[pool._USAGE_MS] += int(1000.0 * (time.monotonic() - self._since))


class _PgSession:
    """A session on one pooled (autocommit) connection; with `begin`, one transaction
    whose control statements ride with its statements in psycopg's pipeline mode (issue
    15): BEGIN goes out with the first statement, an `executemany` (which answers
    nothing) waits for the session's next trip, and COMMIT goes with the statement
    marked `last`, else with what still waits at the session's end. Each trip is one
    round trip, however many statements it carries. A statement that fails in a trip
    skips the rest of it (the COMMIT too): the session's end rolls back."""

    def __init__(
        self,
        conn: psycopg.AsyncConnection[Any],
        *,
        begin: bool = False,
        readers: _Readers | None = None,
    ) -> None:
        self._conn = conn
        self._readers = readers  # a session that is no transaction: its tuple reads'
        self._begin = begin  # BEGIN not sent yet: it rides with the first trip
        self._atomic = begin
        self._waiting: list[tuple[str, Sequence[Any], bool | None]] = []

    async def fetch(self, sql: str, params: Sequence[Any] = (), *, last: bool = False) -> list[Row]:
        cur = await self._trip((_pg_sql(sql), params, None), last=last, rows=True)
        return await cur.fetchall() if _has_rows(cur) else []

    @property
    def client_codec(self) -> str:
        """The Python codec of the session's client encoding ("utf-8" unless the database,
        the role or the connection string sets another)."""
        return self._conn.info.encoding

    async def fetch_tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """`fetch`'s rows as tuples, in the columns' order (no dict a row); in a session
        that is no transaction, on the connection's kept cursor (see `_Readers`)."""
        readers = self._readers
        if readers is None or self._waiting:
            cur = await self._trip((_pg_sql(sql), params, None), last=False, rows=True, tuples=True)
            return await cur.fetchall() if _has_rows(cur) else []
        conn = self._conn
        cur = readers.take(conn)
        await cur.execute(_pg_sql(sql), params, prepare=None)
        rows = await cur.fetchall() if _has_rows(cur) else []
        readers.give_back(conn, cur)
        return rows

    async def fetch_pair(
        self,
        first: tuple[str, Sequence[Any]],
        second: tuple[str, Sequence[Any]],
        *,
        last: bool = False,
    ) -> tuple[list[Row], list[Row]]:
        # The first's cursor goes out before the second, in the same trip.
        head: psycopg.AsyncCursor[Any] = self._conn.cursor(row_factory=dict_row)
        cur = await self._trip(
            (_pg_sql(second[0]), second[1], None),
            last=last,
            rows=True,
            before=(head, _pg_sql(first[0]), first[1]),
        )
        return (
            await head.fetchall() if _has_rows(head) else [],
            await cur.fetchall() if _has_rows(cur) else [],
        )

    async def fetch_each(
        self, statements: Sequence[tuple[str, Sequence[Any]]], *, last: bool = False
    ) -> list[list[Row]]:
        # (PostgreSQL's callers put several writes in one statement instead: WITH.)
        return [
            await self.fetch(sql, params, last=last and i == len(statements) - 1)
            for i, (sql, params) in enumerate(statements)
        ]

    async def execute(self, sql: str, params: Sequence[Any] = (), *, last: bool = False) -> int:
        cur = await self._trip((_pg_sql(sql), params, None), last=last)
        return cur.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        # psycopg's executemany runs a pipeline and a prepared statement per row: about
        # twice the Python CPU of one statement for a batch of a run's events (issue 15).
        # One row is one statement; an INSERT of one VALUES row is one INSERT of them all.
        if not rows:
            return
        statements = _statements(sql, rows)
        if self._atomic:  # with the session's next trip, in order
            self._waiting.extend(statements)
            return
        async with self._conn.cursor() as cur:
            if len(statements) == 1:
                await cur.execute(*statements[0][:2], prepare=statements[0][2])
            elif _values_row(sql) is None:
                await cur.executemany(_pg_sql(sql), rows)
            else:
                for statement, params, prepare in statements:
                    await cur.execute(statement, params, prepare=prepare)

    async def end(self) -> None:
        """Commit the session's transaction with the statements still waiting; nothing
        when no statement ran (no BEGIN went out) or the `last` one committed. A waiting
        statement's error is raised by the session's next trip, so a body that caught
        an error and went on may have caught an earlier statement's: its transaction
        failed, and the session says so rather than end as if it had committed."""
        if self._conn.info.transaction_status == TransactionStatus.INERROR:
            raise psycopg.errors.InFailedSqlTransaction(
                "the session's transaction failed on an earlier statement; nothing is committed"
            )
        if self._waiting:
            await self._trip(None, last=True)
        elif self._conn.info.transaction_status == TransactionStatus.INTRANS:
            await self._conn.commit()

    async def _trip(
        self,
        statement: tuple[str, Sequence[Any], bool | None] | None,
        *,
        last: bool,
        rows: bool = False,
        tuples: bool = False,
        before: tuple[psycopg.AsyncCursor[Any], str, Sequence[Any]] | None = None,
    ) -> psycopg.AsyncCursor[Any]:
        """`statement` (and a cursor with its result) in one round trip, with a BEGIN
        not sent yet, the statements waiting, `before` (a cursor, a statement) just
        before it, and COMMIT when `last` in a transaction."""
        cur: psycopg.AsyncCursor[Any] = (
            self._conn.cursor(row_factory=tuple_row if tuples else dict_row)
            if rows
            else self._conn.cursor()
        )
        commit = last and self._atomic
        if commit and self._begin:
            # The whole transaction in this one trip: no BEGIN and no COMMIT, the trip's
            # statements are one implicit transaction that its Sync commits (rolled back
            # whole when one fails, as psycopg says of a pipeline in autocommit): two
            # statements fewer an event batch (issue 15).
            self._begin = commit = False
        if not (self._begin or self._waiting or commit or before):
            if statement is not None:
                await cur.execute(statement[0], statement[1], prepare=statement[2])
            return cur
        try:
            async with self._conn.pipeline():
                if self._begin:
                    self._begin = False
                    await self._conn.execute("BEGIN")
                waiting, self._waiting = self._waiting, []
                for sql, params, prepare in waiting:
                    await self._conn.execute(sql, params, prepare=prepare)
                if before is not None:
                    await before[0].execute(before[1], before[2])
                if statement is not None:
                    await cur.execute(statement[0], statement[1], prepare=statement[2])
                if commit:
                    await self._conn.execute("COMMIT")
        except asyncio.CancelledError:
            # Cancelled mid-pipeline, psycopg can leave the connection in pipeline mode
            # with results unread (as bulk.write_statements says): closed, the pool
            # replaces it, and the server rolls back what the trip began unless the
            # trip's Sync reached it and its statements run on: a trip that commits on
            # its Sync (`finish_run`'s one trip) may still commit after a cancel or a
            # socket an outage shut, as a COMMIT already sent would.
            await self._conn.close()
            raise
        return cur


_RUN_UPDATE = re.compile(r"UPDATE code_hero_runs SET ((?:\w+ = \?, )*\w+ = \?) WHERE run_id = \?")


def _as_records(update: str, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]] | None:
    """The rows of `update` (`_run_update`'s, the run's id last) as JSON objects named by
    column, run_id last; None when a value would not come back from JSON as it went in
    (a JSON null inside a jsonb value would be a SQL NULL, for one)."""
    said = _RUN_UPDATE.fullmatch(update)
    if said is None:
        return None
    names = [part.split(" = ")[0] for part in said.group(1).split(", ")]
    records: list[dict[str, Any]] = []
    for row in rows:
        record: dict[str, Any] = {}
        for name, value in zip([*names, "run_id"], row, strict=True):
            if isinstance(value, Jsonb):
                if value.obj is None:
                    return None
                record[name] = value.obj
            elif isinstance(value, datetime):
                record[name] = value.isoformat()
            elif (
                value is None
                or isinstance(value, str | int | bool)
                or (isinstance(value, float) and math.isfinite(value))
            ):
                record[name] = value
            else:
                return None
        records.append(record)
    return records


def _statements(
    sql: str, rows: Sequence[Sequence[Any]]
) -> list[tuple[str, Sequence[Any], bool | None]]:
    """An executemany's statements: one per row, or, for an INSERT of one VALUES row,
    one per _ROWS_PER_INSERT rows (the `prepare` flag of each as its third item)."""
    values = _values_row(sql)
    if values is None or len(rows) == 1:
        return [(_pg_sql(sql), row, None) for row in rows]
    head, row, tail = values
    statements: list[tuple[str, Sequence[Any], bool | None]] = []
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        statement = f"{head}{', '.join([row] * len(chunk))}{tail}"
        # Not prepared: a statement per batch size would churn the connection's
        # prepared statements (nor through `_pg_sql`'s cache: its parts are).
        statements.append((statement, [value for r in chunk for value in r], False))
    return statements


_ROWS_PER_INSERT = 500  # far below PostgreSQL's 65,535 parameters at a row's width


@lru_cache(maxsize=64)
def _values_row(sql: str) -> tuple[str, str, str] | None:
    """An `INSERT ... VALUES (row)` statement as (head, row, tail), None for any other:
    rows repeated between head and tail insert a batch in one statement, as executemany
    would row by row (not with ON CONFLICT DO UPDATE: a batch may touch a row twice)."""
    head, sep, rest = sql.partition(" VALUES (")
    if (
        not sep
        or not head.lstrip().upper().startswith("INSERT ")
        or " VALUES " in rest
        or "'" in rest  # a literal could hold a parenthesis
        or "DO UPDATE" in rest.upper()
        or "RETURNING" in rest.upper()
    ):
        return None
    depth = 1
    for i, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:  # psycopg's placeholders already (no `?` spans a part's edge)
            return _pg_sql(f"{head} VALUES "), _pg_sql(f"({rest[:i]})"), _pg_sql(rest[i + 1 :])
    return None


class PostgresRegistry(SqlRegistry):
    """The registry in the PostgreSQL database of the checkpoints, on an autocommit pool."""

    migrations: ClassVar[Sequence[Migration]] = POSTGRES_MIGRATIONS
    migration_lock: ClassVar[str | None] = "SELECT pg_advisory_xact_lock(?::bigint)"
    skip_locked: ClassVar[str] = " FOR UPDATE OF r SKIP LOCKED"
    for_update: ClassVar[str] = " FOR UPDATE"
    writable_ctes: ClassVar[bool] = True
    greatest: ClassVar[str] = "greatest"
    same: ClassVar[str] = "IS NOT DISTINCT FROM"
    webhook_cap_lock: ClassVar[str | None] = "SELECT pg_advisory_xact_lock(?::int, hashtext(?))"
    sweep_lock: ClassVar[str | None] = "SELECT pg_try_advisory_lock(?::bigint) AS taken"
    sweep_unlock: ClassVar[str | None] = "SELECT pg_advisory_unlock(?::bigint) AS released"

    async def setup(self) -> None:
        await super().setup()
        if PURGE_THREAD not in self.migrations:
            return
        # The deletion's function, made again when it is gone while its migration is
        # recorded (dropped by hand, a restore of the tables only): else every deletion
        # would meet undefined_function. The probe finds it missing (`pg_tables.FUNCTIONS`)
        # and reruns this set-up, as for a table.
        async with self._session(atomic=True) as s:
            await s.execute(self.migration_lock or "", [MIGRATION_LOCK_KEY])
            rows = await s.fetch(
                f"SELECT to_regprocedure('{PURGE_THREAD_SIGNATURE}') IS NULL AS missing"
            )
            if rows[0]["missing"]:
                await s.execute(PURGE_THREAD)

    duration_ms_sql: ClassVar[str] = (
        "(EXTRACT(EPOCH FROM (finished_at - started_at)) * 1000)::float8"
    )
    bucket_key_sql: ClassVar[str] = (
        "substr(to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI'), 1, {length})"
    )
    has_percentile_cont: ClassVar[bool] = True

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self._readers = _Readers()  # cursors kept for the pool's connections' reads
        # When a webhook was last seen here (made, or found by a run's end): ends go
        # the two trips their deliveries need for a while after (`finish_run`).
        self._hooks_seen = -math.inf

    def _session(self, *, atomic: bool = False) -> contextlib.AbstractAsyncContextManager[Session]:
        return self._transaction() if atomic else _Lent(self.pool, self._readers)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Session]:
        async with self.pool.connection() as conn:
            session = _PgSession(conn, begin=True)
            try:
                yield session
                await session.end()
            except BaseException:
                # A failed or cancelled session never commits: what it began (a failed
                # trip leaves the transaction aborted) is rolled back.
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    with contextlib.suppress(Exception):
                        await conn.rollback()
                raise

    async def _threads_of(self, rest: str, params: Sequence[Any]) -> list[ThreadRecord]:
        """The page's rows as tuples, each made a record by position (`_page_thread`):
        dict rows, psycopg's jsonb loader and `Dialect._thread` cost this process about
        30 us of CPU a page of eleven, a quarter of the registry's listing (issue 15).
        One JSON value for the page (`json_agg`) saved less here and cost the server
        15 us more."""
        async with self._session() as s:
            session = cast(_PgSession, s)
            rows = await session.fetch_tuples(f"SELECT {_THREAD_PAGE_COLUMNS} {rest}", params)
            codec = None if session.client_codec == "utf-8" else session.client_codec
        return [_page_thread(row, codec) for row in rows]

    async def finish_run(
        self,
        run_id: str,
        thread_status: ThreadStatus,
        *,
        if_unfinished: bool = False,
        if_leased_by: str | None = None,
        if_as_copied: bool = False,
        events: Sequence[EventRecord] = (),
        **fields: Any,
    ) -> tuple[RunRecord | None, bool]:
        """A run's end in one round trip when no webhook can want it (issue 15): the
        thread's lock, then one statement of the run's update, its events and its
        thread's status, committed by the trip's Sync; else `RunClaims.finish_run`'s two
        trips, whose deliveries' payload is made from the updated row in Python.

        The statement comes after the lock, so its snapshot holds every run admitted
        to the thread before the lock was taken, as the look for waiting runs did after
        the update; the run's own row it reads as it was before the update (a
        statement does not see its own changes), so the look skips the run itself,
        whose end status is a finished one (else the two trips). A webhook row of any
        event, or a URL of the run's own, defers the end to the two trips: the
        statement then changes nothing and the thread's lock is let go; for a minute
        after a webhook is seen (found so, or made here) ends go the two trips at once."""
        two_trips = functools.partial(
            super().finish_run,
            run_id,
            thread_status,
            if_unfinished=if_unfinished,
            if_leased_by=if_leased_by,
            if_as_copied=if_as_copied,
            events=events,
            **fields,
        )
        status = fields.get("status")
        recent = time.monotonic() - self._hooks_seen < _HOOKS_REMEMBERED
        if recent or status is None or not RunStatus(status).finished:
            return await two_trips()
        update, params, held = self._end_update(
            fields,
            if_unfinished=if_unfinished,
            if_leased_by=if_leased_by,
            if_as_copied=if_as_copied,
        )
        stored, event_params = "", []
        if events:
            event_params = self._event_arrays(sorted(events, key=lambda e: e.seq))
            # Only an end that applies stores them.
            stored = (
                f"stored AS (INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) "
                f"SELECT * FROM {_UNNEST_EVENTS} "
                "WHERE EXISTS (SELECT 1 FROM run) ON CONFLICT (run_id, seq) DO NOTHING), "
            )
        async with self._session(atomic=True) as s:
            _, rows = await s.fetch_pair(
                (
                    "SELECT t.thread_id FROM code_hero_runs r JOIN code_hero_threads t "
                    f"ON t.thread_id = r.thread_id WHERE r.run_id = ?{self.for_update} OF t",
                    [run_id],
                ),
                (
                    "WITH deferred AS (SELECT EXISTS (SELECT 1 FROM code_hero_webhooks) AS hooks, "
                    "EXISTS (SELECT 1 FROM code_hero_runs WHERE run_id = ? "
                    "AND config -> ? IS NOT NULL) AS own), "
                    f"run AS ({update} AND NOT (SELECT hooks OR own FROM deferred) "
                    f"RETURNING {RUN_COLUMNS}), {stored}"
                    "updated AS (UPDATE code_hero_threads SET status = ?, updated_at = ? "
                    "WHERE thread_id = (SELECT thread_id FROM run) AND NOT EXISTS ("
                    "WITH thread_runs AS MATERIALIZED (SELECT run_id, status FROM code_hero_runs "
                    "WHERE thread_id = (SELECT thread_id FROM run)) SELECT 1 FROM thread_runs "
                    "WHERE status IN ('PENDING', 'RUNNING') AND run_id <> ?) RETURNING 1) "
                    "SELECT run.*, deferred.hooks, deferred.own, "
                    "(SELECT count(*) FROM updated) AS updated "
                    "FROM deferred LEFT JOIN run ON true",
                    [
                        run_id,
                        RUN_WEBHOOK_KEY,
                        *params,
                        run_id,
                        *held,
                        *event_params,
                        ThreadStatus(thread_status).value,
                        self._ts(utc_now()),
                        run_id,
                    ],
                ),
                last=True,
            )
        row = rows[0]
        if row["run_id"] is not None:
            return self._run(row), not row["updated"]
        if not (row["hooks"] or row["own"]):  # no such run, its lease lost, or gone
            return None, False
        if row["hooks"]:
            self._hooks_seen = time.monotonic()
        return await two_trips()

    async def create_webhook(
        self, webhook: WebhookRecord, secret: str, *, limit: int | None = None
    ) -> bool:
        made = await super().create_webhook(webhook, secret, limit=limit)
        self._hooks_seen = time.monotonic()
        return made

    async def delete_thread(self, thread_id: str, *, marked: str | None = None) -> tuple[bool, int]:
        # SqlRegistry's transaction (two locks, the outbox insert, three deletes) as one
        # statement: one round trip instead of eight with BEGIN and COMMIT (issue 15).
        # With `marked`, the row is taken only while it carries that deletion's mark (ttl
        # 0 and its token: `start_deletion`), judged on the row as locked.
        if marked is None:
            sql, params = self._deletion(thread_id, "true")
        else:
            sql, params = self._deletion(
                thread_id, "ttl_seconds = 0 AND deletion_token = ?", [marked]
            )

        async def attempt() -> Row:
            async with self._session() as s:
                return (await s.fetch(f"WITH {sql}", params))[0]

        row = await self._retrying_deadlocks(thread_id, attempt)
        if row["queued"]:
            self._outbox_committed()
        return row["threads"] > 0, int(row["runs"])

    async def purge_idle_thread(
        self, thread_id: str, live_at: datetime | None, owner: str | None = None
    ) -> ThreadPurge:
        """Delete the thread's registry rows and its checkpoints (the savers' tables are in
        this database) in one transaction, unless it has unfinished runs, an edit's claim,
        had expired at `live_at` or (with `owner`) is not that user's: then nothing is
        deleted."""
        # One statement, one round trip: the function (a migration, `PURGE_THREAD`)
        # locks the thread's row first, as admit_run and finish_run lock it, and its
        # checks that follow take their own snapshot, so they see every run admitted
        # before the lock (a check on an older snapshot deleted a run admitted while it
        # waited for the lock, unstopped).
        at, delivery = self._thread_deleted_delivery(thread_id)
        params = [thread_id, at, live_at, owner, *delivery]

        async def attempt() -> Row:
            async with self._session() as s:
                return (await s.fetch(_PURGE, params))[0]

        row = await self._retrying_deadlocks(thread_id, attempt)
        if row["queued"]:
            self._outbox_committed()
        return ThreadPurge(
            busy=bool(row["busy"]),
            expired=bool(row["expired"]),
            edited=bool(row["edited"]),
            existed=row["threads"] > 0,
            checkpoints=int(row["checkpoints"]),
            runs=int(row["runs"]),
            foreign=bool(row["foreign_"]),
        )

    async def _retrying_deadlocks(
        self, thread_id: str, attempt: Callable[[], Awaitable[Row]]
    ) -> Row:
        """A deletion's transaction, tried again when PostgreSQL chose it as a deadlock's
        victim (rolled back whole, nothing deleted): CONFLICT with retryAfter when it
        keeps being chosen, never INTERNAL."""
        for tried in range(1, _DEADLOCK_RETRIES + 1):
            try:
                return await attempt()
            except psycopg.errors.DeadlockDetected:
                # A writer out of the lock order (thread, then its runs, then the
                # checkpoints; none of ours) met it.
                await asyncio.sleep(_DEADLOCK_BACKOFF * tried * random.uniform(0.5, 1.5))
        try:
            return await attempt()
        except psycopg.errors.DeadlockDetected:
            raise ConflictError(
                f"thread {thread_id!r} is being changed concurrently; try again",
                retry_after=1,
            ) from None

    def _deletion(
        self, thread_id: str, go: str, go_params: Sequence[Any] = ()
    ) -> tuple[str, list[Any]]:
        """The common-table expressions that delete the thread's row, runs and events and
        queue its THREAD_DELETED deliveries when `go` (a condition on the thread's row,
        with `go_params`) holds, then the start of the SELECT that counts what they did;
        and their parameters.

        Every sub-statement sees the rows as they were before the statement, so the
        outbox insert still finds the thread's owner. The lock order of every writer
        is kept: the SELECT reads its sub-queries left to right, so the thread is
        locked, then its runs by id, before anything is deleted. The events' delete,
        which nothing reads, runs after the SELECT (as PostgreSQL runs every unread
        data-modifying CTE), when the runs are locked.
        """
        outbox, queued = self._thread_deleted_insert(thread_id)
        sql = (
            "t AS (SELECT thread_id FROM code_hero_threads WHERE thread_id = ? "
            f"AND {go} FOR UPDATE), "
            # Runs have a thread (a foreign key): none when the thread is not locked.
            "r AS (SELECT run_id FROM code_hero_runs WHERE thread_id = ? "
            "AND EXISTS (SELECT 1 FROM t) ORDER BY run_id FOR UPDATE), "
            f"q AS ({outbox} AND EXISTS (SELECT 1 FROM t) RETURNING 1), "
            # = ANY(ARRAY(...)), not IN (...): the planner cannot size the CTE and
            # scanned every event of every thread (7 ms a deletion at 1,000 threads).
            "e AS (DELETE FROM code_hero_run_events "
            "WHERE run_id = ANY(ARRAY(SELECT run_id FROM r))), "
            "dr AS (DELETE FROM code_hero_runs WHERE run_id IN (SELECT run_id FROM r) "
            "RETURNING 1), "
            "dt AS (DELETE FROM code_hero_threads WHERE thread_id IN (SELECT thread_id FROM t) "
            "RETURNING thread_id, created_at), "
            # The tombstone of the row deleted, in the same statement (no round trip of
            # its own): a copy-back never brings the thread back.
            "tomb AS (INSERT INTO code_hero_deleted_threads (thread_id, created_at, deleted_at) "
            "SELECT thread_id, created_at, ?::timestamptz FROM dt "
            "ON CONFLICT (thread_id, created_at) DO UPDATE SET deleted_at = excluded.deleted_at) "
            "SELECT (SELECT count(*) FROM t) AS locked, (SELECT count(*) FROM r) AS locked_runs, "
            "(SELECT count(*) FROM q) AS queued, (SELECT count(*) FROM dr) AS runs, "
            "(SELECT count(*) FROM dt) AS threads"
        )
        return sql, [thread_id, *go_params, thread_id, *queued, clock.now()]

    async def _write_events(
        self,
        s: Session,
        sql: str,
        events: Sequence[EventRecord],
        runs: Mapping[str, Mapping[str, Any]],
    ) -> None:
        statement = self._events_statement(sql, events, runs)
        if statement is None:
            await super()._write_events(s, sql, events, runs)
        else:
            await s.execute(*statement, last=True)

    async def _write_held(
        self,
        s: Session,
        sql: str,
        events: Sequence[EventRecord],
        runs: Mapping[str, Mapping[str, Any]],
        held_by: Mapping[str, str],
    ) -> set[str]:
        # The lease check in the batch's own statement (`_events_statement`'s `lost`):
        # a SELECT of its own was a round trip more a batch (5-12 % of the server's CPU
        # a run with 16 clients).
        held = sorted(r for r in {*(e.run_id for e in events), *runs} if r in held_by)
        statement = (
            self._events_statement(sql, events, runs, [(r, held_by[r]) for r in held])
            if held
            else None
        )
        if statement is None:
            return await super()._write_held(s, sql, events, runs, held_by)
        rows = await s.fetch(*statement, last=True)
        return {row["run_id"] for row in rows}

    def _events_statement(
        self,
        sql: str,
        events: Sequence[EventRecord],
        runs: Mapping[str, Mapping[str, Any]],
        held: Sequence[tuple[str, str]] = (),
    ) -> tuple[str, list[Any]] | None:
        """An event batch as one statement: its runs locked in run order, its events
        inserted from arrays (`unnest`, in binary), its runs' fields set from a JSON
        array of their rows; or None when its updates need more than one UPDATE.

        It was three statements in one trip (the lock, a multi-row INSERT whose text
        changed with its number of rows, the UPDATE), each a Bind and Execute and a send;
        an INSERT of more than 50 parameters had its text parsed again at every batch
        (psycopg caches no larger one) and was never prepared. This text depends only on
        the updated fields, so each connection prepares it once (issue 15). Both writes
        wait on `gate`, the count of the locked runs, evaluated once before either
        writes: every run is locked in run order before any row is written, as when the
        lock was a statement of its own; the inserts' foreign-key checks, at the
        statement's end, find their runs locked already.

        With `held` (run, executor), the runs their executor no longer holds (taken
        over, or ended: `SqlRegistry._not_held`) are left out of both writes, read
        from the locked rows, and the statement returns their ids."""
        head, sep, conflict = sql.partition(f"({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)")
        if not sep or not head.startswith("INSERT INTO code_hero_run_events"):
            return None
        grouped = SqlRegistry._run_updates(self, runs)
        if len(grouped) > 1:
            return None
        records = _as_records(*grouped[0]) if grouped else None
        if (grouped and records is None) or not (events or records):
            return None
        params: list[Any] = []
        gate = " (SELECT count(*) FROM locked) >= 0"
        if held:
            # Reading `lost` reads every locked row first: the same gate.
            gate = " e.run_id <> ALL(ARRAY(SELECT run_id FROM lost))"
        insert = ""
        if events:
            params += self._event_arrays(events)
            insert = (
                f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) SELECT * FROM "
                f"{_UNNEST_EVENTS}{' WHERE' + gate if records or held else ''}{conflict}"
            )
        ids = sorted({*(e.run_id for e in events), *runs})
        if held:
            return self._held_statement(ids, held, insert, params, records)
        if not records:
            return insert, params
        update = f"{_records_update(records, '%b')} AND{gate}"
        lock = (
            "locked AS (SELECT run_id FROM code_hero_runs WHERE run_id = ANY(%b::text[]) "
            "ORDER BY run_id FOR UPDATE)"
        )
        updated = _records_params(records)
        locked = pg_array("text", ids)
        if insert:
            return f"WITH {lock}, ev AS ({insert}) {update}", [locked, *params, *updated]
        return f"WITH {lock} {update}", [locked, *updated]

    @staticmethod
    def _held_statement(
        ids: Sequence[str],
        held: Sequence[tuple[str, str]],
        insert: str,
        params: list[Any],
        records: list[dict[str, Any]] | None,
    ) -> tuple[str, list[Any]]:
        """`_events_statement` with the lease check: `lost`, the held runs whose lease
        another executor has or that ended, read from the runs locked in run order;
        the INSERT (`insert`, `params`) and the UPDATE of `records` leave them out,
        and the statement returns them."""
        parts = [
            "locked AS (SELECT run_id, lease_owner, status FROM code_hero_runs "
            "WHERE run_id = ANY(%b::text[]) ORDER BY run_id FOR UPDATE)",
            "lost AS (SELECT l.run_id FROM locked l JOIN unnest(%b::text[], %b::text[]) "
            "AS h(run_id, owner) ON h.run_id = l.run_id WHERE l.lease_owner IS DISTINCT "
            "FROM h.owner OR l.status NOT IN ('PENDING', 'RUNNING'))",
        ]
        out = [
            pg_array("text", list(ids)),
            pg_array("text", [run_id for run_id, _ in held]),
            pg_array("text", [owner for _, owner in held]),
            *params,
        ]
        if insert:
            parts.append(f"ev AS ({insert})")
        if records:
            parts.append(
                f"up AS ({_records_update(records, '%b')} "
                "AND r.run_id <> ALL(ARRAY(SELECT run_id FROM lost)))"
            )
            out += _records_params(records)
        return f"WITH {', '.join(parts)} SELECT run_id FROM lost", out

    def _copied_events(self, events: Sequence[EventRecord]) -> tuple[str, list[Sequence[Any]]]:
        # From arrays, as an event batch (`_events_statement`): one text, prepared once
        # per connection, where a multi-row INSERT of more than 50 parameters had its
        # text parsed again at every copy (psycopg caches no larger one).
        return (
            f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) SELECT * FROM "
            f"{_UNNEST_EVENTS} ON CONFLICT (run_id, seq) DO NOTHING",
            [self._event_arrays(events)],
        )

    def _copied_events_if(
        self, events: Sequence[EventRecord], guard: str
    ) -> tuple[str, list[Sequence[Any]]]:
        # From arrays, as `_copied_events`.
        return (
            f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) SELECT e.* FROM "
            f"{_UNNEST_EVENTS} WHERE EXISTS (SELECT 1 FROM code_hero_runs r "
            f"WHERE r.run_id = e.run_id AND {guard}) ON CONFLICT (run_id, seq) DO NOTHING",
            [self._event_arrays(events)],
        )

    def _event_arrays(self, events: Sequence[EventRecord]) -> list[Any]:
        """`events` as `_UNNEST_EVENTS`' parameters: one typed array per column."""
        columns = zip(*(self._event_params(e) for e in events), strict=True)
        return [pg_array(t, c) for t, c in zip(_EVENT_TYPES, columns, strict=True)]

    def _run_updates(
        self, runs: Mapping[str, Mapping[str, Any]]
    ) -> list[tuple[str, list[list[Any]]]]:
        """An event batch's run updates: the runs that share a set of field names in one
        UPDATE from a JSON array of their rows (`jsonb_populate_recordset` turns each
        value into its column's type), not an UPDATE per run, each a Bind and Execute and
        a send of its own: about six a run with 16 runs at once (issue 15). Its text
        depends only on the field names, so each connection prepares it once. The runs
        are locked already (`_insert_events` locks them in run order first), so the
        join's order locks nothing out of order. A set with one run, or a value JSON
        would not carry as it is, keeps the UPDATE per run."""
        updates: list[tuple[str, list[list[Any]]]] = []
        for update, rows in super()._run_updates(runs):
            records = _as_records(update, rows) if len(rows) > 1 else None
            if records is None:
                updates.append((update, rows))
                continue
            updates.append(
                (
                    _records_update(records, "?"),
                    [[_jsonb(records), [record["run_id"] for record in records]]],
                )
            )
        return updates

    def _json(self, value: Any) -> Any:
        return _jsonb(value)

    def _from_json(self, value: Any) -> Any:
        return value  # psycopg has already parsed json/jsonb

    def _ts(self, value: datetime) -> Any:
        return value

    def _from_ts(self, value: Any) -> datetime:
        if not isinstance(value, datetime):
            raise TypeError(f"expected a timestamptz, got {value!r}")
        return value.astimezone(UTC)

    def _contains(self, column: str, subset: Mapping[str, Any]) -> tuple[str, list[Any]]:
        return f"{column} @> ?::jsonb", [_jsonb(dict(subset))]

    def _in_many(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(?)", [list(values)]

    def _has_keys(self, column: str, keys: Sequence[str]) -> tuple[str, list[Any]]:
        # Not backed by the GIN index: it is jsonb_path_ops (containment only), which
        # cannot answer key presence; the other conditions and the order's index narrow.
        return f"{column} ??& ?::text[]", [list(keys)]

    def _is_duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def _is_orphan(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.ForeignKeyViolation)


def _records_update(records: Sequence[Mapping[str, Any]], mark: str) -> str:
    """The UPDATE of runs' fields from a JSON array of their rows (`records`, each
    ending with its run_id), its two parameters written `mark` (`?` or `%b`): the
    JSON, then the run ids (`_records_params`)."""
    sets = ", ".join(f"{name} = v.{name}" for name in list(records[0])[:-1])
    return (
        f"UPDATE code_hero_runs AS r SET {sets} FROM jsonb_populate_recordset("
        f"NULL::code_hero_runs, {mark}::jsonb) AS v WHERE r.run_id = v.run_id "
        # The runs by their key: joined on it alone, the plan scanned the whole table
        # (the function's rows are unknown to the planner).
        f"AND r.run_id = ANY({mark}::text[])"
    )


def _records_params(records: Sequence[Mapping[str, Any]]) -> list[Any]:
    """`_records_update`'s parameters, in binary."""
    return [_jsonb(records), pg_array("text", [record["run_id"] for record in records])]
