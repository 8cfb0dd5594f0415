"""Storage backends: the official LangGraph savers plus our registry, per database.

A `Backend` owns its connections (an async context manager) and offers what
the manager needs beyond the saver protocol: a health probe, counting and
enumerating checkpoints, and keeping only the latest checkpoints of a thread.

    MemoryBackend    InMemorySaver + registry in an in-memory SQLite database
    SqliteBackend    AsyncSqliteSaver + registry on the same aiosqlite connection
                     and the same lock (no "database is locked" under load)
    PostgresBackend  SaverPool of AsyncPostgresSaver instances + registry, all on
                     one psycopg pool (autocommit, prepare_threshold=0, checked
                     on checkout without a round trip: `unreachable.py`); in
                     `pg_backend.py`, imported only when PostgreSQL is used
"""

from __future__ import annotations

import asyncio
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiosqlite
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from code_hero.config import CheckpointerConfig
from code_hero.persistence import clock
from code_hero.persistence.records import Registry, ThreadPurge
from code_hero.persistence.registry import SqliteRegistry
from code_hero.persistence.sqlitefiles import SqliteFiles
from code_hero.persistence.sqlitelock import BUSY_MS, ConnectionLock
from code_hero.persistence.sqlitesaver import OneTripSqliteSaver

if TYPE_CHECKING:
    from code_hero.persistence.entries import PutCheckpoint, PutWrites
    from code_hero.persistence.pg_backend import PostgresBackend

__all__ = [
    "Backend",
    "MemoryBackend",
    "PostgresBackend",
    "SqliteBackend",
    "open_backend",
]

log = logging.getLogger(__name__)


class Backend(ABC):
    """One database holding checkpoints and the registry.

    Every backend supplies the abstract methods (one lacking any cannot be built); the
    ones that raise NotImplementedError are optional, and a flag (`batches`,
    `purges_in_one_step`) or the backend's role (a fallback) says when they work."""

    kind = "memory"
    saver: BaseCheckpointSaver[Any]
    registry: Registry
    # The registry's foreign keys hold (SQLite checks them per connection). A fallback
    # turns this off before it opens: it stores events of runs whose rows stay in the
    # primary.
    enforce_references = True
    # True when `put_batch` works: the recovery then replays a thread's
    # checkpoints and writes a batch at a time instead of one call each.
    batches = False
    # True when `purge_idle_thread` works: deleting a thread with no run in flight is
    # then one step (PostgreSQL: one statement; SQLite: one call on its thread), else a
    # deletion takes the steps (every backend has `delete_orphan_checkpoints`, their last).
    purges_in_one_step = False

    def __init__(self, config: CheckpointerConfig) -> None:
        self.config = config

    def pool_saturated(self) -> bool:
        """True when the backend's pool has every connection it may open: a wait for
        one that times out may then mean "busy" rather than "unreachable"."""
        return False

    @property
    def description(self) -> str:
        """Where the data lives, with any password hidden."""
        return self.config.describe()

    @abstractmethod
    async def open(self) -> None:
        """Connect, and run the savers' and registry's migrations when auto_setup."""

    async def close(self) -> None:  # noqa: B027 (optional: nothing to release by default)
        """Release every connection."""

    @abstractmethod
    async def probe(self, *, room: bool = False) -> None:
        """One round trip to the database; raises when it cannot serve. With `room`
        (its disk was full), also raises while it has no room to write a little."""

    async def save_moved(self) -> None:  # noqa: B027 (optional: only files can move)
        """Before a probe's DatabaseFileMoved closes the backend, save what only its
        connection holds; raises when it cannot (the backend then stays open)."""

    @abstractmethod
    async def count_checkpoints(self, thread_id: str, namespace: str | None = None) -> int:
        """How many checkpoints the thread has, in one namespace or (None) in every one."""

    @abstractmethod
    async def checkpoint_keys(self, thread_id: str) -> set[tuple[str, str]]:
        """The thread's checkpoints, as (namespace, checkpoint id) pairs."""

    @abstractmethod
    async def checkpoint_thread_ids(self) -> list[str]:
        """Every thread id that has checkpoints (a scan: for migration and retention)."""

    @abstractmethod
    async def checkpoint_namespaces(self, thread_id: str) -> list[str]:
        """The namespaces the thread has checkpoints in (no saver lists them)."""

    async def delete_checkpoints(self, thread_id: str) -> int:
        """Delete the thread's checkpoints, writes and blobs as the saver's adelete_thread
        does; returns how many checkpoints went."""
        count = await self.count_checkpoints(thread_id)
        await self.saver.adelete_thread(thread_id)
        return count

    @abstractmethod
    async def keep_latest(self, thread_id: str, keep: int) -> int:
        """Delete all but the newest `keep` checkpoints per namespace, sparing the root
        namespace's checkpoints the thread's unfinished runs start from (forks), and none
        while an edit claims the thread; returns how many went.

        The runs and the claim are read in the deletion's own transaction, serialised
        with `admit_run` and `claim_edit`: a fork or an edit admitted before it is seen,
        one admitted after it finds its checkpoint gone (the executor and the edit check)."""

    async def purge_idle_thread(
        self, thread_id: str, live_at: datetime | None, owner: str | None = None
    ) -> ThreadPurge:
        """Delete the thread's checkpoints and registry rows in one step unless it has
        unfinished runs, had expired at `live_at` or (with `owner`) is not that user's
        (then nothing is deleted)."""
        raise NotImplementedError(f"a {self.kind} backend deletes a thread in two steps")

    @abstractmethod
    async def delete_orphan_checkpoints(
        self, thread_id: str, token: str | None = None
    ) -> int | None:
        """Delete the thread's checkpoints, writes and blobs unless the registry has a row
        for it (one the deletion `token` names has marked does not count, nor without a
        token one any deletion has marked), in one step: a thread made anew under the id
        keeps its own. How many checkpoints went, or None when the row is there (nothing
        deleted)."""

    async def reconnect(self) -> None:  # noqa: B027 (optional: nothing to redo by default)
        """Connect afresh after an outage (before the sync-back writes)."""

    def abandon_waits(self) -> None:  # noqa: B027 (optional: no pool to wait on)
        """End the calls waiting for a connection now (none sent a statement yet): the
        database was found unreachable, so what they wait for will not come in time."""

    async def missing_tables(self) -> list[str]:
        """The tables of ours the database lacks (it was dropped and recreated, restored
        empty); none by default: only a server's database can lose them behind us."""
        return []

    def abandon_calls(self) -> None:  # noqa: B027 (optional: nothing in flight to end)
        """End the calls in flight on the database now: it was found unreachable, and a
        server that stopped answering would leave them waiting forever."""

    async def put_batch(self, items: Sequence[PutCheckpoint | PutWrites]) -> None:
        """Write one thread's checkpoints and writes, in order, all or none."""
        raise NotImplementedError(f"a {self.kind} backend writes one call at a time")

    async def forget(self, keep: set[str]) -> None:
        """Drop every thread but those in `keep` (a fallback whose copies are synced)."""
        raise NotImplementedError(f"a {self.kind} backend is never a fallback")

    async def forget_thread(self, thread_id: str) -> None:
        """Drop one thread's checkpoints and registry rows from a fallback."""
        raise NotImplementedError(f"a {self.kind} backend is never a fallback")

    async def give_back_space(self) -> None:  # noqa: B027 (optional: memory has no file)
        """Return a fallback file's free pages to the disk (after `forget`)."""

    async def __aenter__(self) -> Backend:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class MemoryBackend(Backend):
    """Checkpoints in process memory; the registry in an in-memory SQLite database."""

    kind = "memory"

    async def open(self) -> None:
        self.saver = InMemorySaver()
        self._conn = await aiosqlite.connect(":memory:")
        await _foreign_keys(self._conn, self.enforce_references)
        self._lock = asyncio.Lock()
        self.registry = SqliteRegistry(self._conn, self._lock)
        await self.registry.setup()

    async def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            await conn.close()

    async def probe(self, *, room: bool = False) -> None:
        return None

    @property
    def _memory(self) -> InMemorySaver:
        assert isinstance(self.saver, InMemorySaver)
        return self.saver

    async def count_checkpoints(self, thread_id: str, namespace: str | None = None) -> int:
        spaces = self._memory.storage.get(thread_id, {})
        if namespace is not None:
            return len(spaces.get(namespace, {}))
        return sum(len(ns) for ns in spaces.values())

    async def checkpoint_keys(self, thread_id: str) -> set[tuple[str, str]]:
        spaces = self._memory.storage.get(thread_id, {})
        return {(ns, checkpoint_id) for ns, saved in spaces.items() for checkpoint_id in saved}

    async def delete_orphan_checkpoints(
        self, thread_id: str, token: str | None = None
    ) -> int | None:
        # The registry's lock is held from the look to the delete, which never yields:
        # no run is admitted in between (a thread made anew keeps its checkpoints).
        async with self._lock:
            async with self._conn.execute(_LIVE_ROW, (thread_id, token)) as cur:
                if await cur.fetchone() is not None:
                    return None
            removed = sum(len(ns) for ns in self._memory.storage.get(thread_id, {}).values())
            self._memory.delete_thread(thread_id)
        return removed

    async def forget(self, keep: set[str]) -> None:
        if not keep:  # the usual case: start afresh instead of scanning per thread
            self.saver = InMemorySaver()
            await self._clear_registry(None)
            return
        for thread_id in set(self._memory.storage) - keep:
            self._memory.delete_thread(thread_id)
        await self._clear_registry(sorted(keep))

    async def forget_thread(self, thread_id: str) -> None:
        self._memory.delete_thread(thread_id)
        await self.registry.delete_thread(thread_id)
        async with self._lock:
            async with self._conn.execute(
                "DELETE FROM code_hero_run_events WHERE thread_id = ?", (thread_id,)
            ):
                pass
            await self._conn.commit()

    async def _clear_registry(self, keep: list[str] | None) -> None:
        where: str = ""
        params: tuple[str, ...] = ()
        if keep is not None:
            where = " WHERE thread_id NOT IN (SELECT value FROM json_each(?))"
            params = (json.dumps(keep),)
        async with self._lock:
            # A fallback's own tombstones (deletions in the outage) tell nothing later:
            # the journal took those deletions to the primary, which keeps its own.
            tables = ("code_hero_run_events", "code_hero_runs", "code_hero_threads")
            for table in (*tables, "code_hero_deleted_threads"):
                async with self._conn.execute(f"DELETE FROM {table}{where}", params):
                    pass
            await self._conn.commit()

    async def checkpoint_thread_ids(self) -> list[str]:
        return [t for t, spaces in self._memory.storage.items() if any(spaces.values())]

    async def checkpoint_namespaces(self, thread_id: str) -> list[str]:
        return [ns for ns, saved in self._memory.storage.get(thread_id, {}).items() if saved]

    async def keep_latest(self, thread_id: str, keep: int) -> int:
        # The registry's lock is held from the read to the last delete, which never
        # yields: no run or edit is admitted in between.
        async with self._lock:
            async with self._conn.execute(_FORKS, (thread_id,)) as cur:
                spare = {str(r[0]) for r in await cur.fetchall()}
            async with self._conn.execute(_EDITING, (thread_id, _sqlite_now())) as cur:
                if await cur.fetchone() is not None:
                    return 0
            return self._keep_latest(thread_id, keep, spare)

    def _keep_latest(self, thread_id: str, keep: int, spare: set[str]) -> int:
        mem = self._memory
        removed = 0
        for ns, checkpoints in mem.storage.get(thread_id, {}).items():
            for checkpoint_id in sorted(checkpoints, reverse=True)[keep:]:
                if not ns and checkpoint_id in spare:
                    continue
                del checkpoints[checkpoint_id]
                mem.writes.pop((thread_id, ns, checkpoint_id), None)
                removed += 1
        if removed:
            referenced = set()
            for ns, checkpoints in mem.storage.get(thread_id, {}).items():
                for saved in checkpoints.values():
                    checkpoint = mem.serde.loads_typed(saved[0])
                    for channel, version in checkpoint["channel_versions"].items():
                        referenced.add((thread_id, ns, channel, version))
            for key in [k for k in mem.blobs if k[0] == thread_id and k not in referenced]:
                del mem.blobs[key]
        return removed


# The checkpoints a thread's unfinished runs start from, and its edit claim if live, in
# the registry's SQLite tables (the run's config holds `checkpoint_id`; a claim's end is
# fixed-width ISO text, so text order is time order).
_FORKS = (
    "SELECT json_extract(config, '$.checkpoint_id') FROM code_hero_runs WHERE thread_id = ? "
    "AND status IN ('PENDING', 'RUNNING') "
    "AND json_extract(config, '$.checkpoint_id') IS NOT NULL"
)
_EDITING = "SELECT 1 FROM code_hero_threads WHERE thread_id = ? AND edit_until > ?"
# A row that holds the thread's checkpoints (`delete_orphan_checkpoints`): not one a
# deletion under way has marked (ttl 0: `start_deletion`) with the token given, or with
# any token when none is given (`deletion_token IS NOT deletion_token` never holds).
_LIVE_ROW = (
    "SELECT 1 FROM code_hero_threads WHERE thread_id = ? AND (ttl_seconds IS NOT 0 "
    "OR deletion_token IS NOT coalesce(?, deletion_token))"
)


def _sqlite_now() -> str:
    """Now as the SQLite registry writes a time (`SqliteRegistry._ts`)."""
    return clock.now().isoformat(timespec="microseconds")


async def _foreign_keys(conn: aiosqlite.Connection, on: bool) -> None:
    """Turn SQLite's foreign-key checks on (off by default, per connection; the stock
    saver's tables declare none, so only the registry's tables are concerned)."""
    await conn.execute(f"PRAGMA foreign_keys = {'ON' if on else 'OFF'}")


async def _fewer_fsyncs(conn: aiosqlite.Connection) -> None:
    """Under WAL, commit without an fsync each (`synchronous = NORMAL`): safe when the
    process crashes, a power loss may lose the last commits (README, Durability on
    SQLite). Outside WAL NORMAL could corrupt the file on a power loss: left FULL."""
    async with conn.execute("PRAGMA journal_mode") as cur:
        row = await cur.fetchone()
    if row is not None and str(row[0]).lower() == "wal":
        await conn.execute("PRAGMA synchronous = NORMAL")


async def _writable(conn: aiosqlite.Connection) -> None:
    """Raise SQLITE_READONLY now if the file opened read-only (its permissions, a
    read-only mount): the connection would stay read-only after the cause is fixed,
    while its reads and its probe succeed. A write rolled back writes nothing."""
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute(f"PRAGMA user_version = {int(row[0]) if row else 0}")
    finally:
        await conn.execute("ROLLBACK")


class SqliteBackend(Backend):
    """A SQLite file: the stock AsyncSqliteSaver and our registry share one connection."""

    kind = "sqlite"
    purges_in_one_step = True

    async def open(self) -> None:
        path = Path(self.config.database_path or "")
        for parent in (path.parent, *path.parent.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise NotADirectoryError(f"{parent} is not a directory")
                break
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = await aiosqlite.connect(str(path))
        try:
            # Other processes (the CLI, a second server) may hold the file briefly.
            await self._conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
            # A smaller page cache than SQLite's 2 MB: resident memory, where the OS
            # caches the file anyway (README, "Where a run's time and the server's
            # memory go").
            await self._conn.execute(f"PRAGMA cache_size = -{int(self.config.sqlite_cache_kib)}")
            await _foreign_keys(self._conn, self.enforce_references)
            saver = OneTripSqliteSaver(self._conn)
            saver.lock = ConnectionLock(self._conn)  # before anything takes it
            if self.config.auto_setup:
                await saver.setup()
            await _fewer_fsyncs(self._conn)
            await _writable(self._conn)
            self._files = SqliteFiles(str(path))
            self._files.record()
            self.saver = saver
            # The registry takes the saver's lock: every statement on this
            # connection is serialised, so writes never meet "database is locked".
            self.registry = SqliteRegistry(self._conn, saver.lock)
            if self.config.auto_setup:
                await self.registry.setup()
        except BaseException:
            await self._close_conn(self._conn)
            raise

    async def _close_conn(self, conn: aiosqlite.Connection) -> None:
        try:
            await conn.close()
        finally:
            if getattr(self, "_files", None) is not None:
                self._files.forget()  # its database is no longer open here

    async def save_moved(self) -> None:
        async with self._lock:
            await self._files.rescue(self._conn)

    async def close(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is None:
            return
        if getattr(self, "_files", None) is not None:
            try:  # at shutdown too: a file deleted since the last probe is written back
                async with self._lock:  # (or, where that is unsafe, saved beside it)
                    await self._files.rescue(self._conn, closing=True)
            except Exception as exc:  # the close must still happen
                log.error("could not save the moved SQLite file %s: %s", self._files.path, exc)
        await self._close_conn(conn)

    @property
    def _lock(self) -> asyncio.Lock:
        assert isinstance(self.saver, AsyncSqliteSaver)
        return self.saver.lock

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        async with self._lock, self._conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def probe(self, *, room: bool = False) -> None:
        # No `room` check: a full file is found by the copy-back, which stops on it
        # (SQLite has no way to ask for room short of growing the file).
        self._files.check()  # a deleted or replaced file answers every statement, unseen
        await self._fetch("SELECT count(*) FROM sqlite_master")
        assert isinstance(self._lock, ConnectionLock)
        await self._lock.release_if_free()

    async def count_checkpoints(self, thread_id: str, namespace: str | None = None) -> int:
        sql, params = "SELECT count(*) FROM checkpoints WHERE thread_id = ?", [thread_id]
        if namespace is not None:
            sql, params = f"{sql} AND checkpoint_ns = ?", [thread_id, namespace]
        rows = await self._fetch(sql, tuple(params))
        return int(rows[0][0])

    async def checkpoint_keys(self, thread_id: str) -> set[tuple[str, str]]:
        sql = "SELECT checkpoint_ns, checkpoint_id FROM checkpoints WHERE thread_id = ?"
        return {(r[0], r[1]) for r in await self._fetch(sql, (thread_id,))}

    async def checkpoint_thread_ids(self) -> list[str]:
        return [r[0] for r in await self._fetch("SELECT DISTINCT thread_id FROM checkpoints")]

    async def checkpoint_namespaces(self, thread_id: str) -> list[str]:
        sql = "SELECT DISTINCT checkpoint_ns FROM checkpoints WHERE thread_id = ?"
        return [r[0] for r in await self._fetch(sql, (thread_id,))]

    async def delete_checkpoints(self, thread_id: str) -> int:
        # The stock adelete_thread's two deletes, counted by the first (no count query).
        assert isinstance(self.registry, SqliteRegistry)
        async with self.registry.transaction():
            cur = await self._conn.execute(
                "DELETE FROM checkpoints WHERE thread_id = ?", (str(thread_id),)
            )
            removed = cur.rowcount
            await self._conn.execute("DELETE FROM writes WHERE thread_id = ?", (str(thread_id),))
        return int(removed)

    async def purge_idle_thread(
        self, thread_id: str, live_at: datetime | None, owner: str | None = None
    ) -> ThreadPurge:
        # One transaction for the checkpoints and the registry rows (issue 15).
        assert isinstance(self.registry, SqliteRegistry)
        purged: ThreadPurge = await self.registry.purge_idle_thread(thread_id, live_at, owner)
        return purged

    async def delete_orphan_checkpoints(
        self, thread_id: str, token: str | None = None
    ) -> int | None:
        # The registry's rows are in this file: looked for in the deletion's transaction,
        # which holds the file's write lock (an admission waits for it, or came before).
        assert isinstance(self.registry, SqliteRegistry)
        async with self.registry.transaction():
            cur = await self._conn.execute(_LIVE_ROW, (thread_id, token))
            if await cur.fetchone() is not None:
                return None
            cur = await self._conn.execute(
                "DELETE FROM checkpoints WHERE thread_id = ?", (thread_id,)
            )
            removed = cur.rowcount
            await self._conn.execute("DELETE FROM writes WHERE thread_id = ?", (thread_id,))
        return int(removed)

    async def forget(self, keep: set[str]) -> None:
        # A durable fallback's file, emptied after the switch back (kept: quarantined).
        where, params = "", tuple[str, ...]()
        if keep:
            where = " WHERE thread_id NOT IN (SELECT value FROM json_each(?))"
            params = (json.dumps(sorted(keep)),)
        assert isinstance(self.registry, SqliteRegistry)
        async with self.registry.transaction():
            for table in (*_FALLBACK_TABLES, "code_hero_deleted_threads"):
                await self._conn.execute(f"DELETE FROM {table}{where}", params)

    async def give_back_space(self) -> None:
        # On the connection's own thread (aiosqlite), under its lock: the loop waits
        # for nothing; a write to this file meanwhile (a new outage) waits its turn.
        async with self._lock:
            await self._conn.execute("VACUUM")
            # Read to its end: the checkpoint's row left unread keeps the statement in
            # progress (its cursor waits for the cyclic collector), and every commit on
            # this connection fails meanwhile (the next outage's writes).
            await self._conn.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)")

    async def forget_thread(self, thread_id: str) -> None:
        assert isinstance(self.registry, SqliteRegistry)
        async with self.registry.transaction():
            for table in _FALLBACK_TABLES:
                await self._conn.execute(f"DELETE FROM {table} WHERE thread_id = ?", (thread_id,))

    async def keep_latest(self, thread_id: str, keep: int) -> int:
        # The registry's tables are in this file, on this connection: the forks and the
        # edit claim are read by the DELETE itself (one statement, under the lock every
        # statement here takes; another process's admission waits for the file's write
        # lock until the commit).
        assert isinstance(self.registry, SqliteRegistry)
        async with self.registry.transaction():
            cur = await self._conn.execute(
                f"""DELETE FROM checkpoints WHERE rowid IN (
                       SELECT rowid FROM (
                           SELECT rowid, checkpoint_ns, checkpoint_id, row_number() OVER (
                               PARTITION BY checkpoint_ns ORDER BY checkpoint_id DESC) AS rn
                           FROM checkpoints WHERE thread_id = ?)
                       WHERE rn > ? AND NOT (checkpoint_ns = '' AND checkpoint_id IN ({_FORKS})))
                   AND NOT EXISTS ({_EDITING})""",
                (thread_id, keep, thread_id, thread_id, _sqlite_now()),
            )
            removed = cur.rowcount
            await self._conn.execute(
                """DELETE FROM writes WHERE thread_id = ? AND NOT EXISTS (
                       SELECT 1 FROM checkpoints c WHERE c.thread_id = writes.thread_id
                       AND c.checkpoint_ns = writes.checkpoint_ns
                       AND c.checkpoint_id = writes.checkpoint_id)""",
                (thread_id,),
            )
        return int(removed)


# What a fallback's file holds of a thread (`SqliteBackend.forget`).
_FALLBACK_TABLES = (
    "checkpoints",
    "writes",
    "code_hero_run_events",
    "code_hero_runs",
    "code_hero_threads",
)


def open_backend(config: CheckpointerConfig) -> Backend:
    """The (unopened) backend for a config: use it as `async with open_backend(c) as b`."""
    if config.kind == "postgres":
        from code_hero.persistence.pg_backend import PostgresBackend

        return PostgresBackend(config)
    if config.kind == "sqlite":
        return SqliteBackend(config)
    return MemoryBackend(config)


def __getattr__(name: str) -> Any:
    # PostgresBackend lives apart: psycopg and the PostgreSQL saver (~9 MiB resident)
    # load only in a process that uses PostgreSQL.
    if name == "PostgresBackend":
        from code_hero.persistence.pg_backend import PostgresBackend

        return PostgresBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
