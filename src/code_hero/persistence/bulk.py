"""One thread's journalled checkpoints and writes into PostgreSQL in one transaction.

The recovery replays a thread's consecutive `PutCheckpoint` and `PutWrites`
entries through here instead of one `aput`/`aput_writes` call each: one pool
checkout, one hop to a worker thread to serialise the whole batch, and one
pipelined transaction for all its statements. The statements, their order
and their rows are the stock `AsyncPostgresSaver`'s own (its SQL attributes
and dump helpers): what lands in the tables is what the calls would write.

A channel version that an earlier checkpoint of the batch already wrote is
not dumped again: the blob insert is ON CONFLICT DO NOTHING, and both are
in the same transaction, so the row is the same either way. Each entry
still carries every channel, so replayed on its own it stays whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from langgraph.checkpoint.base import WRITES_IDX_MAP, get_serializable_checkpoint_metadata
from langgraph.checkpoint.postgres.base import BasePostgresSaver
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.entries import PutCheckpoint, PutWrites

__all__ = ["Statement", "put_batch", "statements", "write_statements"]

Statement = tuple[str, list[tuple[Any, ...]]]


async def put_batch(
    pool: AsyncConnectionPool[Any],
    saver: BasePostgresSaver,
    items: Sequence[PutCheckpoint | PutWrites],
) -> None:
    """Write `items` (in order) in one transaction; all or none of them lands."""
    # Serialising can take a while for large states: off the event loop, as the
    # stock saver does, but once for the batch.
    planned = await asyncio.to_thread(statements, saver, items)
    await write_statements(pool, planned)


async def write_statements(pool: AsyncConnectionPool[Any], planned: Sequence[Statement]) -> None:
    """Run `planned` in order in one pipelined transaction on one pooled connection: its
    BEGIN, statements and COMMIT in one round trip (psycopg's `transaction()` in a
    pipeline syncs at its start and its end: three trips more, issue 15). A statement
    that fails skips the rest, the COMMIT too, and the transaction is rolled back."""
    async with pool.connection() as conn:
        try:
            async with conn.pipeline(), conn.cursor(binary=True, row_factory=dict_row) as cur:
                await cur.execute("BEGIN")
                for sql, rows in planned:
                    if not rows:  # aput_writes with no writes
                        continue
                    if len(rows) == 1:
                        await cur.execute(sql, rows[0])
                    else:
                        await cur.executemany(sql, rows)
                await cur.execute("COMMIT")
        except asyncio.CancelledError:
            # Cancelled mid-pipeline, psycopg can leave the connection in pipeline mode
            # with results unread: back in the pool, the next borrower's statements would
            # read no rows (an INSERT ... RETURNING with none, a rowcount of -1). Closed,
            # the pool replaces it (and the server rolls back what it began).
            await conn.close()
            raise
        except BaseException:
            if conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(Exception):
                    await conn.rollback()
            raise


def statements(
    saver: BasePostgresSaver, items: Sequence[PutCheckpoint | PutWrites]
) -> list[Statement]:
    """The statements `aput`/`aput_writes` would run for `items`, in their order."""
    planned: list[Statement] = []
    written: set[tuple[str, str, str, Any]] = set()  # blobs earlier in the batch
    for item in items:
        if isinstance(item, PutCheckpoint):
            planned += _checkpoint(saver, item, written)
        else:
            planned.append(_writes(saver, item))
    return planned


def _checkpoint(
    saver: BasePostgresSaver, item: PutCheckpoint, written: set[tuple[str, str, str, Any]]
) -> list[Statement]:
    # Mirrors AsyncPostgresSaver.aput (langgraph-checkpoint-postgres 3.x).
    config, checkpoint = item.config, item.checkpoint
    configurable = config["configurable"].copy()
    thread_id = configurable.pop("thread_id")
    checkpoint_ns = configurable.pop("checkpoint_ns")
    checkpoint_id = configurable.pop("checkpoint_id", None)
    copy = checkpoint.copy()
    copy["channel_values"] = copy["channel_values"].copy()
    blob_values = {}
    for k, v in checkpoint["channel_values"].items():
        if isinstance(v, _DeltaSnapshot):
            blob_values[k] = copy["channel_values"].pop(k)
            copy["channel_values"][k] = True
        elif v is None or isinstance(v, (str, int, float, bool)):
            pass
        else:
            blob_values[k] = copy["channel_values"].pop(k)
    planned: list[Statement] = []
    blob_versions = {k: v for k, v in item.versions.items() if k in blob_values}
    fresh = {
        k: v for k, v in blob_versions.items() if (thread_id, checkpoint_ns, k, v) not in written
    }
    if blob_versions and fresh:
        rows = saver._dump_blobs(thread_id, checkpoint_ns, blob_values, fresh)
        planned.append((saver.UPSERT_CHECKPOINT_BLOBS_SQL, list(rows)))
        written.update((thread_id, checkpoint_ns, k, v) for k, v in fresh.items())
    metadata = get_serializable_checkpoint_metadata(config, item.metadata)
    row = (thread_id, checkpoint_ns, checkpoint["id"], checkpoint_id, Jsonb(copy), Jsonb(metadata))
    planned.append((saver.UPSERT_CHECKPOINTS_SQL, [row]))
    return planned


def _writes(saver: BasePostgresSaver, item: PutWrites) -> Statement:
    # Mirrors AsyncPostgresSaver.aput_writes.
    writes = item.writes
    sql = (
        saver.UPSERT_CHECKPOINT_WRITES_SQL
        if all(w[0] in WRITES_IDX_MAP for w in writes)
        else saver.INSERT_CHECKPOINT_WRITES_SQL
    )
    c = item.config["configurable"]
    rows = saver._dump_writes(
        c["thread_id"], c["checkpoint_ns"], c["checkpoint_id"], item.task_id, item.task_path, writes
    )
    return sql, list(rows)
