"""The stock AsyncSqliteSaver, each checkpoint write one trip to aiosqlite's thread,
concurrent threads' writes one trip and one commit together."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import aiosqlite
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from code_hero.persistence.grouping import GroupCommitter, settle
from code_hero.persistence.sqlitelock import ConnectionLock

__all__ = ["MAX_GROUP", "OneTripSqliteSaver"]

T = TypeVar("T")

# Writes per group at most: bounds a transaction (and the lock's hold), not the queue.
MAX_GROUP = 64

# A write as the sync saver's method name ("put", "put_writes") and its arguments.
Write = tuple[str, tuple[Any, ...]]


class OneTripSqliteSaver(GroupCommitter[Write], AsyncSqliteSaver):
    """`AsyncSqliteSaver` with two changes: `aget_tuple`, `aput` and `aput_writes`
    run the sync saver's own method (same SQL, same serializer) on aiosqlite's
    thread, in one trip; and the writes that arrive while another write or the
    registry holds the connection commit together (group commit).

    The stock methods send each statement, the commit and the cursor's close as
    separate trips (3 for a checkpoint, 4 for writes, 4 for a read), each under
    the lock that the registry shares: a 4-node run made 42 of its 72 trips
    there, and every trip waits for the event loop to hand it on (py-spy under
    bench/peer.py). The one trip goes through aiosqlite's `_execute`, the queue
    all its own methods use, on the sqlite3 connection it opened (`_conn`).

    The trip stays a trip: running every call inline on the event loop (no
    hand-off) was measured on 2026-11-29 and lost. It cut the server's CPU per
    run by ~11% but moved aiosqlite's thread's work onto the loop's thread,
    whose CPU per run rose ~24%; that thread is the limit, so 16 clients ran
    ~15% fewer runs/s (median of 13 pairs; sqlite3 releases the GIL while
    SQLite runs, so on the thread that part overlaps the loop's work).

    Group commit, as on PostgreSQL (`groupcommit.py`), cheaper here: the one
    connection serialises every trip anyway, so a write alone (nothing queued,
    none in flight) goes out at once in its caller's task, as before; the writes
    that arrive meanwhile queue and go in the next group, one trip and one
    transaction for all of them, run by a task of their own. Each caller returns
    once its group has committed. A thread's checkpoints commit in the order they
    were written: the queue is first in, first out and one group is in flight at
    a time, after the lone write it queued behind. A group that fails (a value
    that cannot be serialised, a full disk) is rolled back and its writes are
    made again one by one in the same trip, each committing alone as the stock
    saver does, so only a bad write's caller gets its error (an error of the file
    itself, locked or full, fails the whole group at once). A caller cancelled
    before its group was taken leaves nothing behind; once taken, its write
    commits with the others.
    """

    def __init__(
        self, conn: aiosqlite.Connection, *, serde: SerializerProtocol | None = None
    ) -> None:
        super().__init__(conn, serde=serde)
        self._twin: SqliteSaver | None = None
        self._grouped: SqliteSaver | None = None
        # Transactions that committed writes, and the writes they carried (bench, tests).
        self.transactions = 0
        self.committed = 0

    async def _sync_twin(self) -> SqliteSaver:
        """The sync saver on the same sqlite3 connection, once the tables exist."""
        if self._twin is None:
            await self.setup()  # takes the shared lock: once, not on every call
            twin = SqliteSaver(self.conn._conn, serde=self.serde)
            grouped = _Uncommitted(self.conn._conn, serde=self.serde)
            for saver in (twin, grouped):
                saver.is_setup = True  # set up above (and its script would commit)
                saver._has_task_path = self._has_task_path  # what that set-up found
            self._twin, self._grouped = twin, grouped
        return self._twin

    async def _one_trip(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` on aiosqlite's thread, under the lock the registry shares."""
        async with self.lock:
            result: T = await self.conn._execute(call, *args)  # type: ignore[no-untyped-call]
        return result

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        twin = await self._sync_twin()
        return await self._one_trip(twin.get_tuple, config)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        stored: RunnableConfig = await self._write(
            ("put", (config, checkpoint, metadata, new_versions))
        )
        return stored

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._write(("put_writes", (config, writes, task_id, task_path)))

    def _group_limit(self) -> int:
        return MAX_GROUP

    async def _write(self, write: Write) -> Any:
        await self._sync_twin()  # the tables, before the write goes alone or queues
        return await super()._write(write)

    async def _write_alone(self, write: Write) -> Any:
        assert self._twin is not None
        name, args = write
        result = await self._one_trip(getattr(self._twin, name), *args)
        self.transactions += 1
        self.committed += 1
        return result

    async def _commit(self, group: list[tuple[Write, asyncio.Future[Any]]]) -> None:
        assert self._twin is not None and self._grouped is not None
        writes = [write for write, _ in group]
        try:
            async with self.lock:
                outcomes, transactions = await self.conn._execute(  # type: ignore[no-untyped-call]
                    _commit_group, self.conn._conn, self._grouped, self._twin, writes
                )
                if isinstance(self.lock, ConnectionLock) and outcomes:
                    await self.lock.saw(outcomes[0])  # the file's error fails every write
        except BaseException as exc:  # the connection closed, or the loop is closing
            for _, done in group:
                settle(done, exc)
            raise
        self.transactions += transactions
        for outcome, (_, done) in zip(outcomes, group, strict=True):
            if not isinstance(outcome, Exception):
                self.committed += 1
            settle(done, outcome)


class _Uncommitted(SqliteSaver):
    """The sync saver whose writes leave their transaction open: a group commits once."""

    @contextmanager
    def cursor(self, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        with self.lock:
            cur = self.conn.cursor()
            try:
                yield cur
            finally:
                cur.close()


def _commit_group(
    conn: sqlite3.Connection, grouped: SqliteSaver, stock: SqliteSaver, writes: list[Write]
) -> tuple[list[Any], int]:
    """On aiosqlite's thread: the writes in one transaction; if one fails, rolled back
    and made again one by one, each committing alone (the stock saver's way), unless
    the file itself refused (locked past the busy timeout, full): then every write
    fails with that error, as each would. Each write's result or error, and the
    transactions that committed."""
    try:
        results = [getattr(grouped, name)(*args) for name, args in writes]
        conn.commit()
        return results, 1
    except sqlite3.OperationalError as exc:  # the file (locked, full, unreadable): all fail
        if conn.in_transaction:
            conn.rollback()
        return [exc] * len(writes), 0
    except Exception:
        if conn.in_transaction:
            conn.rollback()
    outcomes: list[Any] = []
    committed = 0
    for name, args in writes:
        try:
            outcomes.append(getattr(stock, name)(*args))
            committed += 1
        except Exception as exc:
            outcomes.append(exc)
    return outcomes, committed
