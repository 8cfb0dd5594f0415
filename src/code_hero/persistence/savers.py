"""Savers that spread one checkpointer's calls over several stock saver instances.

The stock `AsyncPostgresSaver` runs every query of one instance under an
instance lock, so a pool gives one saver no concurrency (langgraph #7259).
`SaverPool` keeps N instances over one shared connection pool and lends a
free one to each call, so N threads write concurrently; each call still runs
the official saver's own SQL. Listings are materialised before the instance
is returned, which also avoids the saver's lock-held-while-yielding deadlock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)

__all__ = ["SaverPool"]


class SaverPool(BaseCheckpointSaver[str]):
    """One checkpointer over several instances of a stock async saver."""

    def __init__(self, instances: Sequence[BaseCheckpointSaver[str]]) -> None:
        if not instances:
            raise ValueError("SaverPool needs at least one saver instance")
        super().__init__(serde=instances[0].serde)
        self.instances = list(instances)
        self._free: asyncio.Queue[BaseCheckpointSaver[str]] = asyncio.Queue()
        for saver in self.instances:
            self._free.put_nowait(saver)

    @asynccontextmanager
    async def _lend(self) -> AsyncIterator[BaseCheckpointSaver[str]]:
        saver = await self._free.get()
        try:
            yield saver
        finally:
            self._free.put_nowait(saver)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        async with self._lend() as saver:
            return await saver.aget_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        async with self._lend() as saver:
            items = [
                item
                async for item in saver.alist(config, filter=filter, before=before, limit=limit)
            ]
        for item in items:
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        async with self._lend() as saver:
            return await saver.aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        async with self._lend() as saver:
            await saver.aput_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        async with self._lend() as saver:
            await saver.adelete_thread(thread_id)

    def get_next_version(self, current: str | None, channel: None) -> str:
        return self.instances[0].get_next_version(current, channel)
