"""The registry of threads, runs and run events, on SQLite and on PostgreSQL.

`_SqlRegistry` holds every query once, written with `?` placeholders. The two
subclasses fill in the dialect seam: how a session (connection, lock,
transaction) is had, how JSON and times travel, how metadata containment and
"id in list" are spelled, and which error means a duplicate key.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, ClassVar, Protocol

import aiosqlite
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from code_hero.errors import BadInputError, ConflictError, NotFoundError
from code_hero.persistence.migrations import POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS, Migration
from code_hero.persistence.records import (
    EventRecord,
    NewEvent,
    Page,
    RunFilter,
    RunRecord,
    RunStatus,
    ThreadFilter,
    ThreadRecord,
    ThreadStatus,
)

__all__ = ["PostgresRegistry", "SqliteRegistry", "run_cursor", "thread_cursor"]

Row = dict[str, Any]

THREAD_COLUMNS = "thread_id, user_id, status, metadata, created_at, updated_at"
RUN_FIELDS = tuple(f.name for f in dataclass_fields(RunRecord))
RUN_COLUMNS = ", ".join(RUN_FIELDS)
EVENT_COLUMNS = "run_id, seq, thread_id, type, payload, at"
RUN_JSON = frozenset({"input", "output", "metadata", "config"})
RUN_NULLABLE_JSON = frozenset({"input", "output"})
RUN_TIMES = frozenset({"created_at", "started_at", "finished_at", "lease_expires_at"})
# pg_advisory_xact_lock key serialising concurrent setup() calls: b"codehero".
MIGRATION_LOCK_KEY = 0x636F_6465_6865_726F
# How often a batch of events is stored again without the runs deleted meanwhile.
_GONE_RETRIES = 5


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise BadInputError(f"naive datetime {value!r}: pass a timezone-aware (UTC) one")
    return value.astimezone(UTC)


def _encode_cursor(kind: str, at: datetime, key: str) -> str:
    raw = _dumps([kind, at.isoformat(), key]).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def thread_cursor(record: ThreadRecord) -> str:
    """The keyset cursor of a thread, as `list_threads` takes it in `after`."""
    return _encode_cursor("thread", record.updated_at, record.thread_id)


def run_cursor(record: RunRecord) -> str:
    """The keyset cursor of a run, as `list_runs` takes it in `after`."""
    if record.created_at is None:
        raise ValueError(f"run {record.run_id!r} has no created_at: it was never stored")
    return _encode_cursor("run", record.created_at, record.run_id)


def _decode_cursor(kind: str, cursor: str) -> tuple[datetime, str]:
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


def _page_size(first: int) -> int:
    if first < 0:
        raise BadInputError(f"first must not be negative, got {first}")
    return first


def _where(clauses: Sequence[str]) -> str:
    return f"WHERE {' AND '.join(clauses)}" if clauses else ""


class _Session(Protocol):
    """One connection (and, when asked for, one transaction) of a registry call."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class _Busy(Exception):
    """Internal: the thread has an unfinished run (rolls an admit back)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id


class _SqlRegistry(ABC):
    """Every registry query, once; subclasses supply the dialect seam."""

    migrations: ClassVar[Sequence[Migration]]
    migration_lock: ClassVar[str | None] = None
    skip_locked: ClassVar[str] = ""  # PostgreSQL: claimers skip rows another one locked
    # PostgreSQL: row locks. Every transaction that locks a thread and its runs locks the
    # thread first, then the runs in run_id order (SQLite: one writer at a time anyway).
    for_update: ClassVar[str] = ""
    key_share: ClassVar[str] = ""

    # --- the dialect seam ---------------------------------------------------

    @abstractmethod
    def _session(self, *, atomic: bool = False) -> AbstractAsyncContextManager[_Session]:
        """A session; `atomic` wraps it in one transaction (writes commit at the end)."""

    @abstractmethod
    def _json(self, value: Any) -> Any:
        """A JSON-compatible value as a query parameter."""

    @abstractmethod
    def _from_json(self, value: Any) -> Any:
        """A JSON column's value as read back."""

    @abstractmethod
    def _ts(self, value: datetime) -> Any:
        """An aware datetime as a query parameter."""

    @abstractmethod
    def _from_ts(self, value: Any) -> datetime:
        """A time column's value as an aware UTC datetime."""

    @abstractmethod
    def _contains(self, column: str, subset: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """A condition: the JSON object in `column` contains `subset`."""

    @abstractmethod
    def _in(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        """A condition: `column` is one of `values` (any number, one parameter)."""

    @abstractmethod
    def _is_duplicate(self, exc: BaseException) -> bool:
        """True when `exc` is a primary-key or unique violation."""

    @abstractmethod
    def _is_orphan(self, exc: BaseException) -> bool:
        """True when `exc` is a foreign-key violation (the row's thread or run is gone)."""

    # --- shared helpers -----------------------------------------------------

    @asynccontextmanager
    async def _unique(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            if self._is_duplicate(exc):
                raise ConflictError(f"{what} already exists") from exc
            raise

    @asynccontextmanager
    async def _parent(self, what: str) -> AsyncIterator[None]:
        try:
            yield
        except Exception as exc:
            if self._is_orphan(exc):
                raise NotFoundError(f"{what} is gone: it was deleted") from exc
            raise

    def _from_ts_or_none(self, value: Any) -> datetime | None:
        return None if value is None else self._from_ts(value)

    def _thread(self, row: Row) -> ThreadRecord:
        return ThreadRecord(
            thread_id=row["thread_id"],
            user_id=row["user_id"],
            status=ThreadStatus(row["status"]),
            metadata=self._from_json(row["metadata"]),
            created_at=self._from_ts(row["created_at"]),
            updated_at=self._from_ts(row["updated_at"]),
        )

    def _run(self, row: Row) -> RunRecord:
        return RunRecord(
            run_id=row["run_id"],
            thread_id=row["thread_id"],
            graph=row["graph"],
            status=RunStatus(row["status"]),
            input=self._from_json(row["input"]),
            output=self._from_json(row["output"]),
            error=row["error"],
            metadata=self._from_json(row["metadata"]),
            config=self._from_json(row["config"]),
            user_id=row["user_id"],
            multitask=row["multitask"],
            created_at=self._from_ts(row["created_at"]),
            started_at=self._from_ts_or_none(row["started_at"]),
            finished_at=self._from_ts_or_none(row["finished_at"]),
            lease_owner=row["lease_owner"],
            lease_expires_at=self._from_ts_or_none(row["lease_expires_at"]),
            cancel_requested=bool(row["cancel_requested"]),
        )

    def _event(self, row: Row) -> EventRecord:
        return EventRecord(
            run_id=row["run_id"],
            thread_id=row["thread_id"],
            seq=row["seq"],
            type=row["type"],
            payload=self._from_json(row["payload"]),
            at=self._from_ts(row["at"]),
        )

    def _run_param(self, name: str, value: Any) -> Any:
        """A RunRecord field's value as the parameter of its column."""
        if name in RUN_JSON:
            if value is None:
                return None if name in RUN_NULLABLE_JSON else self._json({})
            return self._json(value)
        if name in RUN_TIMES:
            return None if value is None else self._ts(_utc(value))
        if name == "status":
            return RunStatus(value).value
        return value

    def _run_params(self, run: RunRecord) -> list[Any]:
        return [self._run_param(name, getattr(run, name)) for name in RUN_FIELDS]

    # --- setup --------------------------------------------------------------

    async def setup(self) -> None:
        """Run the registry's forward-only migrations (idempotent)."""
        async with self._session(atomic=True) as s:
            if self.migration_lock is not None:
                await s.execute(self.migration_lock, [MIGRATION_LOCK_KEY])
            first = self.migrations[0]
            assert isinstance(first, str)  # creates code_hero_migrations: one statement
            await s.execute(first)
            rows = await s.fetch("SELECT MAX(v) AS v FROM code_hero_migrations")
            current = -1 if rows[0]["v"] is None else int(rows[0]["v"])
            for version in range(current + 1, len(self.migrations)):
                migration = self.migrations[version]
                for statement in (migration,) if isinstance(migration, str) else migration:
                    await s.execute(statement)
                await s.execute("INSERT INTO code_hero_migrations (v) VALUES (?)", [version])

    # --- threads ------------------------------------------------------------

    async def upsert_thread(
        self,
        thread_id: str,
        *,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        status: ThreadStatus | None = None,
    ) -> ThreadRecord:
        """Create the thread if missing, else update the given fields; bumps updated_at."""
        now = self._ts(_now())
        updates = ["updated_at = excluded.updated_at"]
        if user_id is not None:
            updates.append("user_id = excluded.user_id")
        if metadata is not None:
            updates.append("metadata = excluded.metadata")
        if status is not None:
            updates.append("status = excluded.status")
        sql = (
            f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT (thread_id) DO UPDATE SET {', '.join(updates)} "
            f"RETURNING {THREAD_COLUMNS}"
        )
        params = [
            thread_id,
            user_id,
            ThreadStatus(status or ThreadStatus.IDLE).value,
            self._json(dict(metadata or {})),
            now,
            now,
        ]
        async with self._session() as s:
            rows = await s.fetch(sql, params)
        return self._thread(rows[0])

    async def touch_threads(
        self, touches: Mapping[str, str | None], *, create: bool = True
    ) -> None:
        """Bump updated_at of each thread id, creating missing ones with that user id
        (unless not `create`: a run's checkpoint never brings a deleted thread back)."""
        if not touches:
            return
        now = self._ts(_now())
        rows: list[tuple[Any, ...]]
        # An existing owner is kept: a touch fills in a missing user id, never changes one.
        if create:
            sql = (
                f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (thread_id) DO UPDATE SET updated_at = excluded.updated_at, "
                "user_id = COALESCE(code_hero_threads.user_id, excluded.user_id)"
            )
            empty, idle = self._json({}), ThreadStatus.IDLE.value
            # Sorted, so that two concurrent batches lock their rows in the same order.
            rows = [(tid, touches[tid], idle, empty, now, now) for tid in sorted(touches)]
        else:
            sql = (
                "UPDATE code_hero_threads SET updated_at = ?, user_id = COALESCE(user_id, ?) "
                "WHERE thread_id = ?"
            )
            rows = [(now, touches[tid], tid) for tid in sorted(touches)]
        async with self._session(atomic=True) as s:
            await s.executemany(sql, rows)

    async def put_thread(self, thread: ThreadRecord) -> None:
        """Insert or replace a thread as given, timestamps included (for migration)."""
        sql = (
            f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (thread_id) DO UPDATE SET user_id = excluded.user_id, "
            "status = excluded.status, metadata = excluded.metadata, "
            "created_at = excluded.created_at, updated_at = excluded.updated_at"
        )
        params = [
            thread.thread_id,
            thread.user_id,
            ThreadStatus(thread.status).value,
            self._json(dict(thread.metadata)),
            self._ts(_utc(thread.created_at)),
            self._ts(_utc(thread.updated_at)),
        ]
        async with self._session() as s:
            await s.execute(sql, params)

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        """One thread, or None."""
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT {THREAD_COLUMNS} FROM code_hero_threads WHERE thread_id = ?", [thread_id]
            )
        return self._thread(rows[0]) if rows else None

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, ThreadRecord]:
        """Several threads in one query (for DataLoaders)."""
        if not thread_ids:
            return {}
        cond, params = self._in("thread_id", list(dict.fromkeys(thread_ids)))
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT {THREAD_COLUMNS} FROM code_hero_threads WHERE {cond}", params
            )
        return {row["thread_id"]: self._thread(row) for row in rows}

    async def list_threads(
        self, flt: ThreadFilter, *, first: int, after: str | None = None
    ) -> Page[ThreadRecord]:
        """Newest updated first, keyset-paged; a page's cost does not grow with the table."""
        first = _page_size(first)
        clauses: list[str] = []
        params: list[Any] = []
        if flt.user_id is not None:
            clauses.append("user_id = ?")
            params.append(flt.user_id)
        if flt.status is not None:
            clauses.append("status = ?")
            params.append(ThreadStatus(flt.status).value)
        if flt.updated_after is not None:
            clauses.append("updated_at > ?")
            params.append(self._ts(_utc(flt.updated_after)))
        if flt.updated_before is not None:
            clauses.append("updated_at < ?")
            params.append(self._ts(_utc(flt.updated_before)))
        if flt.metadata:
            cond, extra = self._contains("metadata", flt.metadata)
            clauses.append(cond)
            params.extend(extra)
        if after is not None:
            at, key = _decode_cursor("thread", after)
            clauses.append("(updated_at, thread_id) < (?, ?)")
            params.extend([self._ts(at), key])
        sql = (
            f"SELECT {THREAD_COLUMNS} FROM code_hero_threads {_where(clauses)} "
            "ORDER BY updated_at DESC, thread_id DESC LIMIT ?"
        )
        async with self._session() as s:
            rows = await s.fetch(sql, [*params, first + 1])
        items = [self._thread(row) for row in rows[:first]]
        end = thread_cursor(items[-1]) if items else None
        return Page(items=items, end_cursor=end, has_next_page=len(rows) > first)

    async def set_thread_status(self, thread_id: str, status: ThreadStatus) -> None:
        """Set a thread's status and bump updated_at (no-op for a missing thread)."""
        async with self._session() as s:
            await s.execute(
                "UPDATE code_hero_threads SET status = ?, updated_at = ? WHERE thread_id = ?",
                [ThreadStatus(status).value, self._ts(_now()), thread_id],
            )

    async def delete_thread(self, thread_id: str) -> tuple[bool, int]:
        """Delete the thread row, its runs and their events: (existed, runs deleted)."""
        async with self._session(atomic=True) as s:
            # The lock order of every writer: the thread, then its runs by id. The
            # foreign keys would cascade; the explicit deletes also serve a fallback,
            # which keeps events of runs whose rows are in the primary.
            await s.fetch(
                f"SELECT thread_id FROM code_hero_threads WHERE thread_id = ?{self.for_update}",
                [thread_id],
            )
            await s.fetch(
                "SELECT run_id FROM code_hero_runs WHERE thread_id = ? "
                f"ORDER BY run_id{self.for_update}",
                [thread_id],
            )
            await s.execute(
                "DELETE FROM code_hero_run_events WHERE run_id IN "
                "(SELECT run_id FROM code_hero_runs WHERE thread_id = ?)",
                [thread_id],
            )
            runs = await s.execute("DELETE FROM code_hero_runs WHERE thread_id = ?", [thread_id])
            threads = await s.execute(
                "DELETE FROM code_hero_threads WHERE thread_id = ?", [thread_id]
            )
        return threads > 0, runs

    async def thread_ids(self, *, updated_before: datetime | None = None) -> list[str]:
        """Every thread id (optionally only those not updated since a time)."""
        sql, params = "SELECT thread_id FROM code_hero_threads", []
        if updated_before is not None:
            sql, params = f"{sql} WHERE updated_at < ?", [self._ts(_utc(updated_before))]
        async with self._session() as s:
            rows = await s.fetch(sql, params)
        return [row["thread_id"] for row in rows]

    # --- runs ---------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> RunRecord:
        """Insert a new run (created now unless given); a run id already stored conflicts."""
        params = self._run_params(run)
        if run.created_at is None:
            params[RUN_FIELDS.index("created_at")] = self._ts(_now())
        placeholders = ", ".join("?" for _ in RUN_FIELDS)
        sql = (
            f"INSERT INTO code_hero_runs ({RUN_COLUMNS}) VALUES ({placeholders}) "
            f"RETURNING {RUN_COLUMNS}"
        )
        async with (
            self._unique(f"run {run.run_id!r}"),
            self._parent(f"thread {run.thread_id!r}"),
            self._session() as s,
        ):
            rows = await s.fetch(sql, params)
        return self._run(rows[0])

    async def update_run(self, run_id: str, **fields: Any) -> RunRecord | None:
        """Set the given RunRecord fields; returns the new record (None if missing)."""
        unknown = sorted(set(fields) - set(RUN_FIELDS[1:]))
        if unknown:
            raise TypeError(f"update_run() got fields RunRecord cannot update: {unknown}")
        if not fields:
            return await self.get_run(run_id)
        sets = ", ".join(f"{name} = ?" for name in fields)
        params = [self._run_param(name, value) for name, value in fields.items()]
        sql = f"UPDATE code_hero_runs SET {sets} WHERE run_id = ? RETURNING {RUN_COLUMNS}"
        async with self._session() as s:
            rows = await s.fetch(sql, [*params, run_id])
        return self._run(rows[0]) if rows else None

    async def get_run(self, run_id: str) -> RunRecord | None:
        """One run, or None."""
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT {RUN_COLUMNS} FROM code_hero_runs WHERE run_id = ?", [run_id]
            )
        return self._run(rows[0]) if rows else None

    async def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """Several runs in one query (for DataLoaders)."""
        if not run_ids:
            return {}
        cond, params = self._in("run_id", list(dict.fromkeys(run_ids)))
        async with self._session() as s:
            rows = await s.fetch(f"SELECT {RUN_COLUMNS} FROM code_hero_runs WHERE {cond}", params)
        return {row["run_id"]: self._run(row) for row in rows}

    async def list_runs(
        self, flt: RunFilter, *, first: int, after: str | None = None
    ) -> Page[RunRecord]:
        """Newest created first, keyset-paged."""
        first = _page_size(first)
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("thread_id", flt.thread_id),
            ("status", None if flt.status is None else RunStatus(flt.status).value),
            ("graph", flt.graph),
            ("user_id", flt.user_id),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if flt.owner is not None:
            clauses.append(
                "thread_id IN (SELECT thread_id FROM code_hero_threads WHERE user_id = ?)"
            )
            params.append(flt.owner)
        if after is not None:
            at, key = _decode_cursor("run", after)
            clauses.append("(created_at, run_id) < (?, ?)")
            params.extend([self._ts(at), key])
        sql = (
            f"SELECT {RUN_COLUMNS} FROM code_hero_runs {_where(clauses)} "
            "ORDER BY created_at DESC, run_id DESC LIMIT ?"
        )
        async with self._session() as s:
            rows = await s.fetch(sql, [*params, first + 1])
        items = [self._run(row) for row in rows[:first]]
        last = items[-1] if items else None
        end = run_cursor(last) if last and last.created_at else None
        return Page(items=items, end_cursor=end, has_next_page=len(rows) > first)

    async def delete_run(self, run_id: str) -> bool:
        """Delete the run and its events."""
        async with self._session(atomic=True) as s:
            await s.execute("DELETE FROM code_hero_run_events WHERE run_id = ?", [run_id])
            deleted = await s.execute("DELETE FROM code_hero_runs WHERE run_id = ?", [run_id])
        return deleted > 0

    async def put_run(self, run: RunRecord) -> None:
        """Insert or replace a run as given (for migration)."""
        params = self._run_params(run)
        if run.created_at is None:
            params[RUN_FIELDS.index("created_at")] = self._ts(_now())
        placeholders = ", ".join("?" for _ in RUN_FIELDS)
        updates = ", ".join(f"{name} = excluded.{name}" for name in RUN_FIELDS[1:])
        sql = (
            f"INSERT INTO code_hero_runs ({RUN_COLUMNS}) VALUES ({placeholders}) "
            f"ON CONFLICT (run_id) DO UPDATE SET {updates}"
        )
        async with self._parent(f"thread {run.thread_id!r}"), self._session() as s:
            await s.execute(sql, params)

    # --- claiming -----------------------------------------------------------

    async def admit_run(
        self,
        run: RunRecord,
        *,
        reject_if_busy: bool,
        events: Sequence[EventRecord] = (),
        owner: str | None = None,
        new_thread: bool = False,
    ) -> tuple[RunRecord | None, str | None]:
        """Record a PENDING run and mark its thread BUSY, in one transaction."""
        now = self._ts(_now())
        params = self._run_params(run)
        if run.created_at is None:
            params[RUN_FIELDS.index("created_at")] = now
        placeholders = ", ".join("?" for _ in RUN_FIELDS)
        try:
            async with self._session(atomic=True) as s:
                # The upsert locks the thread row: concurrent starts on one thread queue here.
                await s.execute(
                    f"INSERT INTO code_hero_threads ({THREAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (thread_id) DO UPDATE SET updated_at = excluded.updated_at, "
                    "status = excluded.status, "
                    # The user who created the thread owns it; a run never changes that.
                    "user_id = COALESCE(code_hero_threads.user_id, excluded.user_id)",
                    [
                        run.thread_id,
                        run.user_id,
                        ThreadStatus.BUSY.value,
                        # A thread a run creates starts with that run's metadata.
                        self._json({"graph": run.graph, **dict(run.metadata)}),
                        now,
                        now,
                    ],
                )
                if owner is not None:
                    owned = await s.fetch(
                        "SELECT user_id FROM code_hero_threads WHERE thread_id = ?",
                        [run.thread_id],
                    )
                    if owned[0]["user_id"] != owner:
                        raise NotFoundError(f"no thread {run.thread_id!r}")  # rolls back
                busy = await s.fetch(
                    "SELECT run_id FROM code_hero_runs WHERE thread_id = ? "
                    "AND status IN ('PENDING', 'RUNNING') ORDER BY created_at, run_id LIMIT 1",
                    [run.thread_id],
                )
                busy_id = busy[0]["run_id"] if busy else None
                if busy_id is not None and reject_if_busy:
                    raise _Busy(busy_id)  # rolls the upsert back: nothing recorded
                async with self._unique(f"a run with id {run.run_id!r}"):
                    rows = await s.fetch(
                        f"INSERT INTO code_hero_runs ({RUN_COLUMNS}) VALUES ({placeholders}) "
                        f"RETURNING {RUN_COLUMNS}",
                        params,
                    )
                    if events:  # stored with the run: whoever claims it numbers on from here
                        await s.executemany(
                            f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            [
                                (
                                    e.run_id,
                                    e.seq,
                                    e.thread_id,
                                    e.type,
                                    self._json(e.payload),
                                    self._ts(_utc(e.at)),
                                )
                                for e in events
                            ],
                        )
        except _Busy as busy_run:
            return None, busy_run.run_id
        return self._run(rows[0]), busy_id

    async def finish_run(
        self, run_id: str, thread_status: ThreadStatus, **fields: Any
    ) -> tuple[RunRecord | None, bool]:
        """End a run and, unless its thread has other unfinished runs, set the thread's
        status: one transaction. Returns (the run, whether other runs are waiting)."""
        unknown = sorted(set(fields) - set(RUN_FIELDS[1:]))
        if unknown:
            raise TypeError(f"finish_run() got fields RunRecord cannot update: {unknown}")
        sets = ", ".join(f"{name} = ?" for name in fields)
        params = [self._run_param(name, value) for name, value in fields.items()]
        async with self._session(atomic=True) as s:
            # The thread first, as admit_run locks it: a run admitted meanwhile is
            # either committed before the look for waiting runs below, or admitted
            # after this commit (and then claimable at once).
            found = await s.fetch("SELECT thread_id FROM code_hero_runs WHERE run_id = ?", [run_id])
            if not found:
                return None, False
            locked = await s.fetch(
                f"SELECT thread_id FROM code_hero_threads WHERE thread_id = ?{self.for_update}",
                [found[0]["thread_id"]],
            )
            if not locked:  # the thread is being deleted, its runs with it
                return None, False
            rows = await s.fetch(
                f"UPDATE code_hero_runs SET {sets} WHERE run_id = ? RETURNING {RUN_COLUMNS}",
                [*params, run_id],
            )
            if not rows:
                return None, False
            run = self._run(rows[0])
            waiting = await s.fetch(
                "SELECT 1 AS one FROM code_hero_runs WHERE thread_id = ? "
                "AND status IN ('PENDING', 'RUNNING') LIMIT 1",
                [run.thread_id],
            )
            if not waiting:
                await s.execute(
                    "UPDATE code_hero_threads SET status = ?, updated_at = ? WHERE thread_id = ?",
                    [ThreadStatus(thread_status).value, self._ts(_now()), run.thread_id],
                )
        return run, bool(waiting)

    async def unfinished_runs(self, thread_id: str) -> list[RunRecord]:
        """The thread's PENDING and RUNNING runs, oldest first."""
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT {RUN_COLUMNS} FROM code_hero_runs WHERE thread_id = ? "
                "AND status IN ('PENDING', 'RUNNING') ORDER BY created_at, run_id",
                [thread_id],
            )
        return [self._run(r) for r in rows]

    async def claim_runs(
        self,
        owner: str,
        *,
        now: datetime,
        until: datetime,
        limit: int,
        graphs: Sequence[str] | None = None,
        run_ids: Sequence[str] | None = None,
    ) -> list[RunRecord]:
        """Lease up to `limit` claimable runs, oldest first, one per thread at most
        (only of the given graphs, only the given runs, when those are given)."""
        if limit < 1 or (run_ids is not None and not run_ids):
            return []
        extra, extra_params = "", []
        if graphs is not None:
            cond, vals = self._in("r.graph", list(graphs))
            extra += f" AND {cond}"
            extra_params += vals
        if run_ids is not None:
            cond, vals = self._in("r.run_id", list(run_ids))
            extra += f" AND {cond}"
            extra_params += vals
        sql = (
            f"UPDATE code_hero_runs SET lease_owner = ?, lease_expires_at = ? "
            f"WHERE run_id IN ("
            f"  SELECT r.run_id FROM code_hero_runs r"
            f"  WHERE r.status IN ('PENDING', 'RUNNING') AND NOT r.cancel_requested"
            f"  AND (r.lease_expires_at IS NULL OR r.lease_expires_at < ?){extra}"
            f"  AND NOT EXISTS (SELECT 1 FROM code_hero_runs o"
            f"    WHERE o.thread_id = r.thread_id AND o.status IN ('PENDING', 'RUNNING')"
            f"    AND (o.created_at < r.created_at"
            f"         OR (o.created_at = r.created_at AND o.run_id < r.run_id)))"
            f"  ORDER BY r.created_at, r.run_id LIMIT ?{self.skip_locked}"
            f") AND (lease_expires_at IS NULL OR lease_expires_at < ?) "
            f"RETURNING {RUN_COLUMNS}"
        )
        ts_now, ts_until = self._ts(_utc(now)), self._ts(_utc(until))
        async with self._session(atomic=True) as s:
            rows = await s.fetch(sql, [owner, ts_until, ts_now, *extra_params, limit, ts_now])
        runs = [self._run(r) for r in rows]
        return sorted(runs, key=lambda r: (r.created_at or now, r.run_id))

    async def renew_leases(
        self, owner: str, run_ids: Sequence[str], until: datetime
    ) -> list[RunRecord]:
        """Extend the leases `owner` still holds; returns those runs."""
        if not run_ids:
            return []
        where, ids = self._in("run_id", list(run_ids))
        async with self._session() as s:
            rows = await s.fetch(
                f"UPDATE code_hero_runs SET lease_expires_at = ? WHERE lease_owner = ? "
                f"AND status IN ('PENDING', 'RUNNING') AND {where} RETURNING {RUN_COLUMNS}",
                [self._ts(_utc(until)), owner, *ids],
            )
        return [self._run(r) for r in rows]

    async def release_runs(self, owner: str, run_ids: Sequence[str]) -> None:
        """Give up leases so another executor may claim the runs at once."""
        if not run_ids:
            return
        where, ids = self._in("run_id", list(run_ids))
        async with self._session() as s:
            await s.execute(
                f"UPDATE code_hero_runs SET lease_owner = NULL, lease_expires_at = NULL "
                f"WHERE lease_owner = ? AND {where}",
                [owner, *ids],
            )

    async def request_cancel(self, run_id: str) -> RunRecord | None:
        """Flag the run for cancellation; returns it."""
        async with self._session() as s:
            rows = await s.fetch(
                f"UPDATE code_hero_runs SET cancel_requested = ? WHERE run_id = ? "
                f"RETURNING {RUN_COLUMNS}",
                [True, run_id],
            )
        return self._run(rows[0]) if rows else None

    async def claim_cancelled(
        self, owner: str, *, now: datetime, until: datetime
    ) -> list[RunRecord]:
        """Lease the unfinished runs flagged for cancellation that no live executor holds."""
        async with self._session() as s:
            rows = await s.fetch(
                f"UPDATE code_hero_runs SET lease_owner = ?, lease_expires_at = ? "
                "WHERE run_id IN (SELECT r.run_id FROM code_hero_runs r "
                "  WHERE r.cancel_requested AND r.status IN ('PENDING', 'RUNNING') "
                "  AND (r.lease_expires_at IS NULL OR r.lease_expires_at < ?)"
                # Rows a deletion (or another claimer) holds are skipped, not waited for.
                f"  ORDER BY r.run_id{self.skip_locked}"
                f") AND (lease_expires_at IS NULL OR lease_expires_at < ?) RETURNING {RUN_COLUMNS}",
                [owner, self._ts(_utc(until)), self._ts(_utc(now)), self._ts(_utc(now))],
            )
        return [self._run(r) for r in rows]

    # --- events -------------------------------------------------------------

    async def append_events(self, run_id: str, events: Sequence[NewEvent]) -> None:
        """Store events in one transaction; a seq already stored is an error."""
        if not events:
            return
        sql = f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        async with self._unique(f"an event of run {run_id!r} with one of these seqs"):
            async with self._session(atomic=True) as s:
                found = await s.fetch(
                    f"SELECT thread_id FROM code_hero_runs WHERE run_id = ?{self.key_share}",
                    [run_id],
                )
                if not found:
                    raise NotFoundError(f"no run {run_id!r}: create the run before its events")
                thread_id = found[0]["thread_id"]
                rows = [
                    (run_id, e.seq, thread_id, e.type, self._json(e.payload), self._ts(_utc(e.at)))
                    for e in events
                ]
                await s.executemany(sql, rows)

    async def store_events(self, events: Sequence[EventRecord]) -> None:
        """Store events of any runs in one transaction (each carries its run and thread);
        events of runs deleted meanwhile are dropped."""
        sql = f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
        async with self._unique("an event whose (run, seq) is already stored"):
            await self._insert_events(sql, events)

    async def put_events(self, events: Sequence[EventRecord]) -> None:
        """Store events, skipping any whose (run, seq) is stored already (for copies) and
        any of runs deleted meanwhile."""
        sql = (
            f"INSERT INTO code_hero_run_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id, seq) DO NOTHING"
        )
        await self._insert_events(sql, events)

    async def _insert_events(self, sql: str, events: Sequence[EventRecord]) -> None:
        """Insert in one transaction; on a foreign-key violation, again without the events
        of runs that are gone (a run that ends after its thread's deletion leaves none)."""
        for _ in range(_GONE_RETRIES):
            if not events:
                return
            # In run order: the foreign-key checks lock the runs in the order a deletion
            # locks them.
            rows = [
                (e.run_id, e.seq, e.thread_id, e.type, self._json(e.payload), self._ts(_utc(e.at)))
                for e in sorted(events, key=lambda e: (e.run_id, e.seq))
            ]
            try:
                async with self._session(atomic=True) as s:
                    await s.executemany(sql, rows)
                return
            except Exception as exc:
                if not self._is_orphan(exc):
                    raise
            present = await self.get_runs([e.run_id for e in events])
            events = [e for e in events if e.run_id in present]
        raise NotFoundError("runs of these events keep being deleted: the events are dropped")

    async def list_events(
        self, run_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[EventRecord]:
        """Events with seq > after_seq, in order."""
        sql = (
            f"SELECT {EVENT_COLUMNS} FROM code_hero_run_events "
            "WHERE run_id = ? AND seq > ? ORDER BY seq"
        )
        params: list[Any] = [run_id, after_seq]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(_page_size(limit))
        async with self._session() as s:
            rows = await s.fetch(sql, params)
        return [self._event(row) for row in rows]

    async def last_seq(self, run_id: str) -> int:
        """The highest seq stored for the run (0 when none)."""
        async with self._session() as s:
            rows = await s.fetch(
                "SELECT MAX(seq) AS seq FROM code_hero_run_events WHERE run_id = ?", [run_id]
            )
        return int(rows[0]["seq"] or 0)


# --- SQLite -------------------------------------------------------------------


def _unquotable(key: str) -> bool:
    """True for a key that a quoted JSON path label cannot spell (SQLite has no escapes)."""
    return '"' in key or "\\" in key or "\x00" in key


def _sqlite_path(keys: Sequence[str]) -> str:
    return "$" + "".join(f'."{key}"' for key in keys)


def _sqlite_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _sqlite_leaf(value_sql: str, type_sql: str, leaf: Any) -> tuple[str, list[Any]]:
    """A condition on one leaf, given SQL for its value and for its JSON type."""
    if leaf is None:
        return f"{type_sql} = 'null'", []
    if isinstance(leaf, bool):
        return f"{type_sql} = ?", ["true" if leaf else "false"]
    if isinstance(leaf, Mapping):  # an empty object: any object is there
        return f"{type_sql} = 'object'", []
    # The type test keeps true from matching 1, and "[1]" from matching [1].
    if isinstance(leaf, str):
        kinds = "'text'"
    elif isinstance(leaf, list):
        kinds = "'array'"
    else:
        kinds = "'integer', 'real'"
    return f"{type_sql} IN ({kinds}) AND {value_sql} = json_extract(?, '$')", [_dumps(leaf)]


def _leaves(
    subset: Mapping[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in subset.items():
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, (*prefix, str(key)))
        else:
            yield (*prefix, str(key)), value


class _SqliteSession:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.execute(sql, params) as cur:
            rows = await cur.fetchall()
            names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in rows]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._conn.execute(sql, params) as cur:
            return cur.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self._conn.executemany(sql, rows):
            pass


class SqliteRegistry(_SqlRegistry):
    """The registry in the SQLite database of the checkpoints, on the saver's connection.

    Every statement runs under `lock`, the one the `AsyncSqliteSaver` holds on the
    same connection, and each write commits before the lock is released. The
    foreign keys hold only on a connection with `PRAGMA foreign_keys = ON`, which
    the backends turn on (a fallback's stays off: it keeps the events of runs whose
    rows are in the primary).
    """

    migrations: ClassVar[Sequence[Migration]] = SQLITE_MIGRATIONS

    def __init__(self, conn: aiosqlite.Connection, lock: asyncio.Lock) -> None:
        self.conn = conn
        self.lock = lock

    @asynccontextmanager
    async def _session(self, *, atomic: bool = False) -> AsyncIterator[_Session]:
        async with self.lock:
            if atomic and not self.conn.in_transaction:
                # IMMEDIATE takes the write lock now: another process cannot slip in
                # between our first read and first write.
                await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteSession(self.conn)
            except BaseException:
                if self.conn.in_transaction:
                    await self.conn.rollback()
                raise
            if self.conn.in_transaction:
                await self.conn.commit()

    def _json(self, value: Any) -> Any:
        return _dumps(value)

    def _from_json(self, value: Any) -> Any:
        return None if value is None else json.loads(value)

    def _ts(self, value: datetime) -> Any:
        # Fixed width (always microseconds, always +00:00), so text order is time order.
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def _from_ts(self, value: Any) -> datetime:
        return datetime.fromisoformat(value)

    def _contains(self, column: str, subset: Mapping[str, Any]) -> tuple[str, list[Any]]:
        # Unlike PostgreSQL's @>, a leaf array matches only an equal array (same
        # elements, same order), not any array that contains its elements; and
        # numbers compare by value (1 matches 1.0), as in JSONB.
        clauses: list[str] = []
        params: list[Any] = []
        for path, leaf in _leaves(subset):
            if not any(_unquotable(key) for key in path):
                json_path = _sqlite_literal(_sqlite_path(path))
                cond, extra = _sqlite_leaf(
                    f"json_extract({column}, {json_path})",
                    f"json_type({column}, {json_path})",
                    leaf,
                )
                clauses.append(cond)
                params.extend(extra)
                continue
            # SQLite's JSON paths cannot quote a '"' inside a key, so walk such
            # paths with json_each, which compares keys as plain text.
            parent, parent_params = column, []
            for key in path[:-1]:
                parent = (
                    f"(SELECT value FROM json_each({parent}) WHERE key = ? AND type = 'object')"
                )
                parent_params.append(key)
            cond, extra = _sqlite_leaf("e.value", "e.type", leaf)
            clauses.append(
                f"EXISTS (SELECT 1 FROM json_each({parent}) AS e WHERE e.key = ? AND {cond})"
            )
            params.extend([*parent_params, path[-1], *extra])
        return " AND ".join(f"({c})" for c in clauses), params

    def _in(self, column: str, values: Sequence[str]) -> tuple[str, list[Any]]:
        return f"{column} IN (SELECT value FROM json_each(?))", [_dumps(list(values))]

    def _is_duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and exc.sqlite_errorcode in (
            1555,  # SQLITE_CONSTRAINT_PRIMARYKEY
            2067,  # SQLITE_CONSTRAINT_UNIQUE
        )

    def _is_orphan(self, exc: BaseException) -> bool:
        # SQLITE_CONSTRAINT_FOREIGNKEY; only raised on a connection with foreign_keys on.
        return isinstance(exc, sqlite3.IntegrityError) and exc.sqlite_errorcode == 787


# --- PostgreSQL ---------------------------------------------------------------


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """Our `?` placeholders as psycopg's `%s` (no query here uses a literal ? or %)."""
    return sql.replace("?", "%s")


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


class PostgresRegistry(_SqlRegistry):
    """The registry in the PostgreSQL database of the checkpoints, on an autocommit pool."""

    migrations: ClassVar[Sequence[Migration]] = POSTGRES_MIGRATIONS
    migration_lock: ClassVar[str | None] = "SELECT pg_advisory_xact_lock(?::bigint)"
    skip_locked: ClassVar[str] = " FOR UPDATE OF r SKIP LOCKED"
    for_update: ClassVar[str] = " FOR UPDATE"
    key_share: ClassVar[str] = " FOR KEY SHARE"

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    @asynccontextmanager
    async def _session(self, *, atomic: bool = False) -> AsyncIterator[_Session]:
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

    def _is_duplicate(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.UniqueViolation)

    def _is_orphan(self, exc: BaseException) -> bool:
        return isinstance(exc, psycopg.errors.ForeignKeyViolation)
