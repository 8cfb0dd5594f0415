"""Group commit: the checkpoint writes of many threads in one PostgreSQL transaction.

With 16 threads running at once, the manager's event loop spent about half its
time in psycopg doing one pool checkout, one pipeline and one commit (one WAL
flush) per `aput` and per `aput_writes` (py-spy, bench/checkpoints.py). Here the
writes that arrive while a transaction is in flight wait for the next one, which
carries them all: one checkout, one hop to a worker thread to serialise, one
pipelined transaction. Each caller returns once that transaction has committed.

- The statements and their rows are the stock `AsyncPostgresSaver`'s own (`bulk.py`).
- One transaction is in flight at a time and the queue is first in, first out,
  so a thread's checkpoint N+1 is never committed before its checkpoint N.
- A value that cannot be serialised fails its own caller only. A transaction
  that PostgreSQL refuses (say a string with a NUL in a jsonb) is retried one
  write per transaction, so only the bad write's caller gets the error. A
  database that cannot be reached fails every caller of the batch at once: the
  fallback router takes each of them to the fallback.
- The transaction runs in a task of its own: a caller cancelled while it is in
  flight stops waiting, and the others' writes commit (or fail) whole. A caller
  cancelled before its write was taken leaves nothing behind.
- Reads, deletes and the rest stay the `SaverPool`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.bulk import (
    Statement,
    statements,
    write_planned,
    write_statements,
)
from code_hero.persistence.contention import waited_out
from code_hero.persistence.entries import PutCheckpoint, PutWrites
from code_hero.persistence.grouping import GroupCommitter, settle
from code_hero.persistence.pgjsonb import DumpedJsonb
from code_hero.persistence.savers import SaverPool
from code_hero.persistence.unreachable import is_backend_error

log = logging.getLogger(__name__)

__all__ = ["MAX_BATCH", "GroupCommitSaverPool"]

# Writes per transaction at most: bounds the transaction, not the queue.
MAX_BATCH = 256
# A batch this small is serialised on the event loop, as the stock saver does: a
# hop to a worker thread per write cost a lone thread's runs about a third of
# their rate (sequential runs on PostgreSQL, 37 vs 53 runs/s), and with 16
# concurrent runs of a small graph the hop's hand-over and the answer's way back
# to the loop took ~4% of the loop's time, serialising ~0.3% (py-spy under
# bench/peer.py, issue 15). A larger batch goes to a worker thread, and so does
# the rest of a batch once its writes serialised on the loop carry INLINE_BYTES:
# serialised there, big values do not hold the loop up for every other run (16
# checkpoints of 1 MB of messages held it ~45 ms, against ~24 ms one by one).
INLINE_PLAN = 16
INLINE_BYTES = 256 * 1024

Item = PutCheckpoint | PutWrites
# A write that serialised, or the error that serialising it raised.
Planned = list[Statement] | Exception


class GroupCommitSaverPool(GroupCommitter[Item], SaverPool):
    """A `SaverPool` of stock `AsyncPostgresSaver`s whose writes commit in groups."""

    def __init__(self, instances: Sequence[BaseCheckpointSaver[str]]) -> None:
        super().__init__(instances)
        if not all(isinstance(i, AsyncPostgresSaver) for i in self.instances):
            raise TypeError("GroupCommitSaverPool needs AsyncPostgresSaver instances")
        # Transactions committed and the writes they carried (bench and tests).
        self.transactions = 0
        self.committed = 0
        # Groups whose one statement failed and were written one by one instead.
        self.split = 0

    @property
    def _stock(self) -> AsyncPostgresSaver:
        saver = self.instances[0]
        assert isinstance(saver, AsyncPostgresSaver)
        return saver

    @property
    def _pool(self) -> AsyncConnectionPool[Any]:
        # Read at each commit: PostgresBackend.reconnect() swaps the savers' pool.
        pool = self._stock.conn
        assert isinstance(pool, AsyncConnectionPool)
        return pool

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        entry = PutCheckpoint(config, checkpoint, metadata, new_versions)
        await self._write(entry)
        return entry.stored

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self._write(PutWrites(config, tuple(writes), task_id, task_path))

    def _group_limit(self) -> int:
        return MAX_BATCH  # read at each group (a test lowers it)

    async def _write_alone(self, item: Item) -> None:
        """A write alone in its caller's task: a lone thread's write pays no hop to the
        flusher and back, which cost sequential runs a sixth of their rate."""
        (plan,) = _plan(self._stock, [item])
        if isinstance(plan, Exception):
            raise plan
        await write_planned(self._pool, self._stock, plan)
        self.transactions += 1
        self.committed += 1

    async def _commit(self, batch: list[tuple[Item, asyncio.Future[Any]]]) -> None:
        try:
            items = [item for item, _ in batch]
            # On the loop while small; what is left (a big value met) on a worker thread.
            planned = _plan(self._stock, items[:INLINE_PLAN], budget=INLINE_BYTES)
            if len(planned) < len(items):
                planned += await asyncio.to_thread(_plan, self._stock, items[len(planned) :])
            ready: list[tuple[list[Statement], asyncio.Future[Any]]] = []
            for plan, (_, done) in zip(planned, batch, strict=True):
                if isinstance(plan, Exception):
                    settle(done, plan)
                else:
                    ready.append((plan, done))
            if not ready:
                return
            try:
                await write_planned(
                    self._pool, self._stock, _merged(self._stock, [p for p, _ in ready])
                )
            except Exception as exc:
                # A lock wait that ran out, a statement the database cancelled: each
                # write alone would wait the whole bound again, one after another.
                if len(ready) == 1 or is_backend_error(exc) or waited_out(exc):
                    for _, done in ready:
                        settle(done, exc)
                    return
                self.split += 1
                log.warning(
                    "a group of %d checkpoint writes failed as one statement (%s: %s); "
                    "writing them one by one",
                    len(ready),
                    type(exc).__name__,
                    exc,
                )
                await self._one_by_one(ready)
                return
            self.transactions += 1
            self.committed += len(ready)
            for _, done in ready:
                settle(done, None)
        except asyncio.CancelledError as exc:
            for _, done in batch:  # the loop is closing: no caller is left waiting
                settle(done, exc)
            raise
        except Exception as exc:  # a worker thread refused (shutting down): fail the batch
            for _, done in batch:
                settle(done, exc)

    async def _one_by_one(self, ready: list[tuple[list[Statement], asyncio.Future[Any]]]) -> None:
        """Each write in a transaction of its own: only a bad one fails, its caller only."""
        for i, (plan, done) in enumerate(ready):
            try:
                await write_statements(self._pool, plan)
            except Exception as exc:
                if is_backend_error(exc):  # the database went away meanwhile: stop there
                    for _, rest in ready[i:]:
                        settle(rest, exc)
                    return
                settle(done, exc)
                continue
            self.transactions += 1
            self.committed += 1
            settle(done, None)


def _plan(saver: AsyncPostgresSaver, items: list[Item], budget: int | None = None) -> list[Planned]:
    """Each write's statements, or the error serialising it raised; with a `budget`,
    the first writes only, up to the one whose values took the total past it."""
    planned: list[Planned] = []
    spent = 0
    for item in items:
        try:
            plan = statements(saver, [item])
        except Exception as exc:
            planned.append(exc)
            continue
        planned.append(plan)
        if budget is not None:
            spent += _size(plan)
            if spent > budget:
                break
    return planned


def _size(plan: list[Statement]) -> int:
    """About the bytes a write's statements carry (its serialised values, its jsonb's
    JSON text among them: `statements` dumped it)."""
    size = 0
    for _, rows in plan:
        for row in rows:
            for value in row:
                if isinstance(value, bytes | bytearray | str):
                    size += len(value)
                elif isinstance(value, DumpedJsonb):
                    size += len(value.obj)
    return size


def _merged(saver: AsyncPostgresSaver, plans: list[list[Statement]]) -> list[Statement]:
    """The writes' statements as few statements: every row of one SQL together.

    Blob rows are inserted ON CONFLICT DO NOTHING with values fixed by their
    version, and checkpoint rows keep their relative order, so grouping them
    changes no row. Pending writes keep their order exactly (an upsert and an
    insert may meet on one key): only neighbours with the same SQL are merged.
    There are no foreign keys, and it is all one transaction.
    """
    blobs: list[tuple[Any, ...]] = []
    checkpoints: list[tuple[Any, ...]] = []
    writes: list[Statement] = []
    for plan in plans:
        for sql, rows in plan:
            if sql == saver.UPSERT_CHECKPOINT_BLOBS_SQL:
                blobs += rows
            elif sql == saver.UPSERT_CHECKPOINTS_SQL:
                checkpoints += rows
            elif writes and writes[-1][0] == sql:
                writes[-1][1].extend(rows)
            else:
                writes.append((sql, list(rows)))
    merged: list[Statement] = []
    if blobs:
        merged.append((saver.UPSERT_CHECKPOINT_BLOBS_SQL, blobs))
    if checkpoints:
        merged.append((saver.UPSERT_CHECKPOINTS_SQL, checkpoints))
    return merged + writes
