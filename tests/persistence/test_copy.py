"""Copying a thread's history (copyThread, migrate) page by page, on memory, SQLite and
PostgreSQL: the copy is identical, and no more than a page of it is held at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)

from code_hero.persistence.backends import Backend
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.transfer import copy_thread_checkpoints
from tests.graphs import build_graph

PAGE = 3


async def history(manager: EnhancedCheckpointerManager, thread_id: str) -> list[tuple[Any, ...]]:
    """Every checkpoint of every namespace as a reader sees it, the thread's id left out."""
    tuples = await manager.router.read_list({"configurable": {"thread_id": thread_id}})
    seen = []
    for t in tuples:
        conf = t.config["configurable"]
        parent = t.parent_config["configurable"] if t.parent_config else {}
        metadata = {k: v for k, v in t.metadata.items() if k != "thread_id"}
        assert t.metadata.get("thread_id", thread_id) == thread_id
        seen.append(
            (
                conf["checkpoint_ns"],
                conf["checkpoint_id"],
                parent.get("checkpoint_id"),
                parent.get("checkpoint_ns", conf["checkpoint_ns"]),
                repr(sorted(t.checkpoint["channel_values"].items())),
                repr(sorted(t.checkpoint["channel_versions"].items())),
                repr(sorted(metadata.items())),
                repr(sorted(t.pending_writes or [])),
            )
        )
    return sorted(seen)


async def long_thread(manager: EnhancedCheckpointerManager, thread_id: str) -> Backend:
    """A thread of three runs through a graph with a subgraph: several namespaces, the
    root one many pages long; returns the backend it is stored in."""
    saver = manager.get_checkpointer()
    graph = build_graph(nodes=4, with_subgraph=True).compile(checkpointer=saver)
    config = manager.create_thread_config(thread_id, user_id="alice")
    for i in range(3):
        await graph.ainvoke({"messages": [HumanMessage(f"hi {i}")], "blob": bytes([i])}, config)
    backend = manager.router.primary.backend
    assert backend is not None
    return backend


class Counting(BaseCheckpointSaver[Any]):
    """A saver that passes everything on and counts the checkpoints listed but not yet
    written back: the checkpoints a copy holds at once."""

    def __init__(self, inner: BaseCheckpointSaver[Any]) -> None:
        super().__init__(serde=inner.serde)
        self.inner = inner
        self.held = self.most = self.listings = 0

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        self.listings += 1
        async for item in self.inner.alist(config, filter=filter, before=before, limit=limit):
            self.held += 1
            self.most = max(self.most, self.held)
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        self.held -= 1
        return await self.inner.aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await self.inner.aput_writes(config, writes, task_id, task_path)


async def test_a_copy_page_by_page_is_identical(manager: EnhancedCheckpointerManager) -> None:
    backend = await long_thread(manager, "source")
    namespaces = await backend.checkpoint_namespaces("source")
    assert "" in namespaces and len(namespaces) == 4  # the root and one per subgraph call
    source = await history(manager, "source")
    roots = [c for c in source if not c[0]]
    assert len(roots) > 3 * PAGE and any(c[-1] != "[]" for c in source)  # writes pending

    copied = await copy_thread_checkpoints(backend.saver, "source", "copy", namespaces, page=PAGE)
    assert copied == len(source)
    assert await history(manager, "copy") == source
    assert await history(manager, "source") == source


async def test_a_copy_holds_no_more_than_a_page(manager: EnhancedCheckpointerManager) -> None:
    backend = await long_thread(manager, "source")
    namespaces = await backend.checkpoint_namespaces("source")
    counting = Counting(backend.saver)
    copied = await copy_thread_checkpoints(counting, "source", "copy", namespaces, page=PAGE)
    assert counting.held == 0 and counting.most == PAGE
    assert counting.listings >= copied // PAGE  # it did page
