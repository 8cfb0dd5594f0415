"""The stock AsyncPostgresSaver, reading a checkpoint with small pending writes on the loop."""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import CheckpointTuple
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

__all__ = ["INLINE_WRITES_BYTES", "LoopReadingPostgresSaver"]


# Pending writes up to this many bytes are decoded on the loop: well under a
# millisecond of msgpack, less than the thread round trip it saves.
INLINE_WRITES_BYTES = 64 * 1024


def _size(pending_writes: Any) -> int:
    return sum(len(part) for write in pending_writes for part in write if part is not None)


class LoopReadingPostgresSaver(AsyncPostgresSaver):
    """`AsyncPostgresSaver` with one change: a row whose pending writes are small (or
    absent) is turned into a tuple on the event loop.

    The stock saver decodes each row's blobs on the loop but hands its pending writes
    to a thread (`asyncio.to_thread`), however small: a history page of 20 paid 21
    thread round trips, about 6 ms of a 70 ms page on a loaded machine (py-spy,
    bench/peer.py). Larger writes still go the stock way; the SQL and the decoding
    are the stock saver's own (the sync saver's method, which differs only by not
    using a thread).
    """

    async def _load_checkpoint_tuple(self, value: Any) -> CheckpointTuple:
        writes = value["pending_writes"]
        if writes and _size(writes) > INLINE_WRITES_BYTES:
            return await super()._load_checkpoint_tuple(value)
        tuple_: CheckpointTuple = PostgresSaver._load_checkpoint_tuple(self, value)  # type: ignore[arg-type]
        return tuple_
