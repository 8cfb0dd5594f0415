"""`ManagedSaver`: the checkpointer graphs are compiled with.

It holds no state of its own: every call goes to the `FallbackRouter`, which
picks the backend. The sync methods are the one wrapper of the async ones,
for graphs driven with invoke()/stream() from worker threads.

Within `telling_saves(tell)`, each checkpoint whose save returned is told to
`tell`: LangGraph streams a checkpoint while its save may still be in flight
(and a cancel of the run may drop that save), so a run announces a checkpoint
only once told it is stored.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)

from code_hero.errors import BackendUnavailableError
from code_hero.persistence.entries import PutCheckpoint, PutWrites
from code_hero.persistence.fallback import FallbackRouter, full_versions, thread_of
from code_hero.persistence.slots import BackendSlot

__all__ = ["ManagedSaver", "SaveListener", "fresh_thread", "telling_saves"]

R = TypeVar("R")

# Seconds a run's own checkpoint write goes on trying after a busy pool's first answer
# (which came after the pool's timeout) before the run fails: a moment's load spike
# must not end a run half-way. A client's write (a state edit, the seed's own graphs)
# answers busy at once: its client retries.
RUN_WRITE_PATIENCE = 5.0


def _patience(config: RunnableConfig) -> float:
    # A run of the registry names itself in its config (the executor puts it there).
    return RUN_WRITE_PATIENCE if "run_id" in config.get("configurable", {}) else 0.0


# The thread whose first checkpoint read is known to find nothing, until that read.
_FRESH: ContextVar[list[str] | None] = ContextVar("code_hero_fresh_thread", default=None)


# Told (the config as stored, the checkpoint's metadata) of each checkpoint stored.
SaveListener = Callable[[RunnableConfig, CheckpointMetadata], None]
_SAVES: ContextVar[SaveListener | None] = ContextVar("code_hero_saves", default=None)


@contextmanager
def telling_saves(tell: SaveListener) -> Iterator[None]:
    """Within it (and the tasks started in it: LangGraph's background saves), every
    checkpoint `ManagedSaver.aput` stores is told to `tell` once stored (its save returned,
    or went on to its end on the fallback through a cancel of the run); a save that
    failed or was cancelled before it stored is not. `tell` must not raise."""
    token = _SAVES.set(tell)
    try:
        yield
    finally:
        _SAVES.reset(token)


@asynccontextmanager
async def fresh_thread(thread_id: str | None) -> AsyncIterator[None]:
    """Within it, the first read of `thread_id`'s latest root checkpoint finds nothing
    without asking a backend: a run on a thread its admission just made, executing for
    the first time. Nothing else writes to the thread while that run is in flight (an
    edit or another run waits for its end), so the read would find nothing: it is a
    round trip a run on PostgreSQL (issue 15). `None`: reads as usual."""
    if thread_id is None:
        yield
        return
    token = _FRESH.set([thread_id])
    try:
        yield
    finally:
        _FRESH.reset(token)


def _known_empty(config: RunnableConfig) -> bool:
    """Whether this is the read `fresh_thread` answers (once)."""
    fresh = _FRESH.get()
    if not fresh:
        return False
    conf = config.get("configurable", {})
    if conf.get("thread_id") != fresh[0] or conf.get("checkpoint_ns") or conf.get("checkpoint_id"):
        return False
    fresh.clear()
    return True


class ManagedSaver(BaseCheckpointSaver[str]):
    """The checkpointer graphs use: forwards every call to the fallback router."""

    def __init__(self, router: FallbackRouter, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.router = router
        self.loop = loop

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        if _known_empty(config):
            return None
        return await self.router.read_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in await self.router.read_list(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        thread_id = thread_of(config)
        router = self.router

        async def call(slot: BackendSlot) -> RunnableConfig:
            assert slot.backend is not None
            # A copy outside the primary carries every channel, so it reads back whole.
            versions = new_versions if slot is router.primary else full_versions(checkpoint)
            return await slot.backend.saver.aput(config, checkpoint, metadata, versions)

        def entry() -> PutCheckpoint:
            return PutCheckpoint(config, checkpoint, metadata, full_versions(checkpoint))

        tell = _SAVES.get()

        def told(result: RunnableConfig) -> None:
            if tell is not None:
                tell(result, metadata)

        # Told by the router, not once it returns: a save on the fallback goes on to its
        # end through a cancel of the run, stored, and the router then raises the cancel.
        result = await router.write(
            "put", thread_id, call, entry, patience=_patience(config), stored=told
        )
        if result is None:  # no backend at all: run on without checkpoints
            return entry().stored
        if not config["configurable"].get("checkpoint_ns"):
            user = config["configurable"].get("user_id") or metadata.get("user_id")
            # A run of the registry (its config names it) was admitted with its thread
            # row: its checkpoint only bumps that row, so a run that ends after its
            # thread's deletion cannot bring the thread back. A plain graph.ainvoke
            # on the manager's saver creates the row.
            create = "run_id" not in config["configurable"]
            await router.touch(thread_id, None if user is None else str(user), create=create)
        return result

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        async def call(slot: BackendSlot) -> None:
            assert slot.backend is not None
            await slot.backend.saver.aput_writes(config, writes, task_id, task_path)

        def entry() -> PutWrites:
            return PutWrites(config, tuple(writes), task_id, task_path)

        await self.router.write(
            "put_writes", thread_of(config), call, entry, patience=_patience(config)
        )

    async def adelete_thread(self, thread_id: str) -> None:
        await self.router.delete_thread(str(thread_id))

    def get_next_version(self, current: str | None, channel: None) -> str:
        # The same version format as every stock saver, so copies move between them.
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(str(current).split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    # Sync twins for graphs driven with invoke()/stream() from worker threads:
    # each runs the async method on the manager's loop (never on that loop itself).
    def _on_loop(self, coro: Awaitable[R]) -> R:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise BackendUnavailableError(
                "synchronous checkpointer calls cannot run on the manager's event loop; "
                "use the async API (ainvoke/astream) or call from another thread"
            )
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self._on_loop(self.aget_tuple(config))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        yield from self._on_loop(
            self.router.read_list(config, filter=filter, before=before, limit=limit)
        )

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self._on_loop(self.aput(config, checkpoint, metadata, new_versions))

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self._on_loop(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str) -> None:
        self._on_loop(self.adelete_thread(thread_id))
