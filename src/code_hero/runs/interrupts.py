"""What interrupted threads wait for: their pending interrupts, read from LangGraph's state.

LangGraph keeps an interrupt as a pending write of the checkpoint it stopped
at; `aget_state(..., subgraphs=True)` shows it on the task that raised it, in
the subgraph that task belongs to. Each is listed with LangGraph's interrupt
id, the node that asked, the subgraph's namespace ("" for the root graph), the
value it asked with, and the run that stopped there (the thread's newest
INTERRUPTED run in the registry, whose graph reads the state).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import StateSnapshot

from code_hero.errors import NotFoundError
from code_hero.persistence.changes import GRAPH_ID_KEY
from code_hero.persistence.jsonable import to_jsonable
from code_hero.persistence.records import (
    Registry,
    RunFilter,
    RunRecord,
    RunStatus,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.runs.events import namespace_of
from code_hero.runs.graphs import GraphRegistry

__all__ = ["PendingInterrupt", "graph_of", "pending_interrupts", "pending_of"]


@dataclass(frozen=True)
class PendingInterrupt:
    """One question an interrupted thread waits to have answered."""

    interrupt_id: str
    node: str
    namespace: str
    value: Any
    run_id: str | None


async def graph_of(
    registry: Registry, graphs: GraphRegistry, thread_id: str, thread: ThreadRecord | None
) -> str | None:
    """The graph the thread last ran (its newest run's, else the one that wrote its latest
    checkpoint), else the one its metadata names (None: the default)."""
    runs = await registry.list_runs(RunFilter(thread_id=thread_id), first=1)
    return await _graph_for(graphs, thread_id, runs.items[0] if runs.items else None, thread)


async def _graph_for(
    graphs: GraphRegistry, thread_id: str, last: RunRecord | None, thread: ThreadRecord | None
) -> str | None:
    """`graph_of` given the thread's newest run (`last`, None: it has none)."""
    if last is None and (wrote := await _graph_checkpointed(graphs, thread_id)) is not None:
        return wrote
    return _graph_named(graphs, last, thread)


async def _graph_checkpointed(graphs: GraphRegistry, thread_id: str) -> str | None:
    """The loaded graph that wrote the thread's latest checkpoint (its metadata's
    GRAPH_ID_KEY), for a thread with no run left: deleteRun took them, a copy has none."""
    saver = graphs.get(None).checkpointer
    if not isinstance(saver, BaseCheckpointSaver):
        return None
    item = await saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    named = None if item is None else item.metadata.get(GRAPH_ID_KEY)
    return named if isinstance(named, str) and named in graphs.names() else None


def _graph_named(
    graphs: GraphRegistry, last: RunRecord | None, thread: ThreadRecord | None
) -> str | None:
    """`graph_of` given the thread's newest run (`last`, None: it has none)."""
    named = last.graph if last is not None else None
    if named is None and thread is not None:
        named = thread.metadata.get("graph")
    return named if isinstance(named, str) and named in graphs.names() else None


def pending_of(state: StateSnapshot, namespace: str = "") -> list[tuple[str, str, str, Any]]:
    """(id, node, namespace, value) of every pending interrupt, from the deepest subgraph:
    an interrupt whose task has written since (answered at this checkpoint) is not."""
    found: list[tuple[str, str, str, Any]] = []
    for task in state.tasks:
        sub = task.state
        if isinstance(sub, StateSnapshot):
            ns = namespace_of([p for p in (namespace, f"{task.name}:{task.id}") if p])
            deeper = pending_of(sub, ns)
            if deeper:  # the parent's task repeats its subgraph's interrupt: keep the asker
                found += deeper
                continue
        if task.result is not None:
            # Answered already at this checkpoint (a fork of it): LangGraph keeps the
            # task's writes there and would reuse them, whatever a new answer says.
            continue
        found += [(i.id, task.name, namespace, i.value) for i in task.interrupts]
    return found


async def pending_interrupts(
    registry: Registry, graphs: GraphRegistry, threads: Sequence[ThreadRecord]
) -> dict[str, list[PendingInterrupt]]:
    """The pending interrupts of each INTERRUPTED thread (the others are left out).

    One registry query for the page's runs (two when some thread has no INTERRUPTED
    run); then one state read per thread, on graphs compiled once at start-up,
    concurrently.
    """
    waiting = [t for t in threads if t.status is ThreadStatus.INTERRUPTED]
    if not waiting:
        return {}
    runs = await registry.latest_runs([t.thread_id for t in waiting], RunStatus.INTERRUPTED)
    # No INTERRUPTED run (a copy has none; deleteRun took it): the graph it last ran,
    # else the one its metadata names; the newest runs of all such threads in one query.
    others = [t.thread_id for t in waiting if t.thread_id not in runs]
    newest = await registry.latest_runs(others, None) if others else {}

    async def one(thread: ThreadRecord) -> list[PendingInterrupt]:
        thread_id = thread.thread_id
        run = runs.get(thread_id)
        name = (
            run.graph
            if run is not None
            else await _graph_for(graphs, thread_id, newest.get(thread_id), thread)
        )
        try:
            graph = graphs.get(name)
        except NotFoundError:  # a graph no longer loaded: the default reads its state
            graph = graphs.get(None)
        config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
        state = await graph.aget_state(config, subgraphs=True)
        run_id = None if run is None else run.run_id
        return [
            PendingInterrupt(str(iid), node, ns, to_jsonable(value), run_id)
            for iid, node, ns, value in pending_of(state)
        ]

    found = await asyncio.gather(*(one(t) for t in waiting))
    return dict(zip((t.thread_id for t in waiting), found, strict=True))
