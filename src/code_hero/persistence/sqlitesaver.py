"""The stock AsyncSqliteSaver, each checkpoint write one trip to aiosqlite's thread."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

__all__ = ["OneTripSqliteSaver"]

T = TypeVar("T")


class OneTripSqliteSaver(AsyncSqliteSaver):
    """`AsyncSqliteSaver` with one change: `aget_tuple`, `aput` and `aput_writes`
    run the sync saver's own method (same SQL, same serializer) on aiosqlite's
    thread, in one trip.

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
    """

    def __init__(
        self, conn: aiosqlite.Connection, *, serde: SerializerProtocol | None = None
    ) -> None:
        super().__init__(conn, serde=serde)
        self._twin: SqliteSaver | None = None

    async def _sync_twin(self) -> SqliteSaver:
        """The sync saver on the same sqlite3 connection, once the tables exist."""
        if self._twin is None:
            await self.setup()  # takes the shared lock: once, not on every call
            twin = SqliteSaver(self.conn._conn, serde=self.serde)
            twin.is_setup = True  # set up above (and its script would commit)
            twin._has_task_path = self._has_task_path  # what that set-up found
            self._twin = twin
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
        twin = await self._sync_twin()
        return await self._one_trip(twin.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        twin = await self._sync_twin()
        await self._one_trip(twin.put_writes, config, writes, task_id, task_path)
