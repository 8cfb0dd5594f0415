"""Human edits of a thread's state (`updateState`): a checkpoint written as a node's update.

The edit goes through LangGraph's own `aupdate_state` on the graph the thread
last ran (else the one named in its metadata, else the default), compiled with
the manager's checkpointer: reducers apply (a list of messages is appended to,
not replaced), `as_node` names the node the update counts as, and the
checkpoint is recorded with LangGraph's metadata source "update" (a fork from a
past checkpoint too: LangGraph records "update" for it as well, with that
checkpoint as its parent). A run started afterwards begins from the edit.

The edit first claims the thread in the registry (`Registry.claim_edit`, one
transaction): a thread with a run in flight is refused (CONFLICT) before
anything is written, as `startRun` refuses one with multitask REJECT, and one
another edit holds is refused with `retryAfter`. A thread whose deletion started
since the edit found it is NOT_FOUND (the claim never remakes its row), and a
deletion refuses to start while the claim holds (CONFLICT with `retryAfter`;
a bulk deletion skips the thread), so no edit writes onto a deleted thread. While the claim holds,
`startRun` on the thread is refused with `retryAfter` whatever its multitask
strategy, so no run starts from the checkpoint the edit supersedes nor writes
beside it. The claim ends with the edit, written or refused, and lapses after
`EDIT_CLAIM` when the process died mid-edit. After the write the registry
records the edit on the thread (`Registry.settle_edit`). Its status
follows LangGraph's state: LangGraph drops a pending interrupt when the state
is edited (the interrupt was a pending write of the checkpoint the edit
supersedes), so an edited thread is IDLE unless its new state still has
pending interrupts; a new run (not a `resume`) carries on from the edit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.errors import InvalidUpdateError
from langgraph.pregel import Pregel

from code_hero.errors import BadInputError, CodeHeroError, ConflictError, NotFoundError
from code_hero.persistence import clock
from code_hero.persistence.changes import AS_NODE_KEY, GRAPH_ID_KEY
from code_hero.persistence.checkpoints import CheckpointView
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.records import Registry, ThreadRecord, ThreadStatus
from code_hero.runs.graphs import GraphRegistry
from code_hero.runs.interrupts import graph_of, pending_of
from code_hero.runs.requests import UpdateState

__all__ = ["EDIT_CLAIM", "UpdateState", "update_state"]

log = logging.getLogger(__name__)

# How long an edit's claim on its thread holds unless released: an edit takes
# milliseconds, so this only bounds how long a process that died mid-edit blocks runs.
EDIT_CLAIM = timedelta(seconds=10)

# Channels LangGraph keeps for itself: never a key of a caller's update.
_INTERNAL = ("__", "branch:")


async def update_state(
    manager: EnhancedCheckpointerManager, graphs: GraphRegistry, req: UpdateState
) -> CheckpointView:
    """Write the edit as a checkpoint; the new checkpoint."""
    if not isinstance(req.values, Mapping):
        raise BadInputError("values must be a JSON object of the graph's state keys")
    registry = manager.registry
    thread = await registry.get_thread(req.thread_id)
    if thread is None:
        # An expired row (a deletion under way, `start_deletion`, or the sweep's) hides a
        # thread whose checkpoints are still there: not one only the savers hold, to claim
        # anew. The claim judges that row under its lock: a clock read here, before a
        # write moved its expires_at (updated_at + its ttl) past it, took it for none.
        thread = await registry.get_thread(req.thread_id, expired=True)
        if thread is None and await manager.get_checkpoint(req.thread_id) is None:
            raise NotFoundError(f"no thread {req.thread_id!r}")
    until = clock.now() + EDIT_CLAIM
    try:  # the claim inside: a cancellation that lands as it commits still releases it
        busy = await registry.claim_edit(req.thread_id, until, seen=thread is not None)
        if busy is not None:
            raise ConflictError(
                f"thread {req.thread_id!r} is busy with run {busy!r}; "
                "edit its state once the run has ended"
            )
        checkpoint_id = await _write(manager, graphs, req, thread)
    finally:
        await _release(registry, req.thread_id, until)
    view = await manager.get_checkpoint(req.thread_id, checkpoint_id, req.namespace)
    if view is None:  # the thread was deleted meanwhile
        raise NotFoundError(f"no thread {req.thread_id!r}")
    return view


async def _write(
    manager: EnhancedCheckpointerManager,
    graphs: GraphRegistry,
    req: UpdateState,
    thread: ThreadRecord | None,
) -> str:
    """Check the edit against the thread's graph, write it and settle the thread (its claim
    held); the new checkpoint's id."""
    registry = manager.registry
    if req.checkpoint_id is not None or req.namespace:
        found = await manager.get_checkpoint(req.thread_id, req.checkpoint_id, req.namespace)
        if found is None:
            where = f"checkpoint {req.checkpoint_id!r}" if req.checkpoint_id else "a checkpoint"
            raise NotFoundError(
                f"{where} of namespace {req.namespace!r} is not in thread {req.thread_id!r}"
            )
    graph_name = await graph_of(registry, graphs, req.thread_id, thread)
    graph = graphs.get(graph_name)
    target = _graph_at(graph, req.namespace)
    _check_update(target, req)
    configurable: dict[str, Any] = {"thread_id": req.thread_id, "checkpoint_ns": req.namespace}
    if req.checkpoint_id is not None:
        configurable["checkpoint_id"] = req.checkpoint_id
    config: RunnableConfig = {
        "configurable": configurable,
        "metadata": {GRAPH_ID_KEY: graph_name or graphs.default},
    }
    if req.as_node is not None:  # LangGraph records as_node nowhere: `updatedBy` reads this
        config["metadata"][AS_NODE_KEY] = req.as_node
    try:
        written = await graph.aupdate_state(config, dict(req.values), as_node=req.as_node)
    except CodeHeroError:
        raise
    except (InvalidUpdateError, ValueError, TypeError, NotImplementedError) as exc:
        # LangGraph or a reducer refused the caller's values (add_messages raises
        # NotImplementedError for what it cannot read as a message); nothing was written.
        raise BadInputError(f"the update was refused: {type(exc).__name__}: {exc}") from None
    checkpoint_id = str(written["configurable"]["checkpoint_id"])
    state = await graph.aget_state({"configurable": {"thread_id": req.thread_id}}, subgraphs=True)
    status = ThreadStatus.INTERRUPTED if pending_of(state) else ThreadStatus.IDLE
    if (admitted := await registry.settle_edit(req.thread_id, status)) is not None:
        # Only after the claim lapsed (an edit slower than EDIT_CLAIM): the edit is saved,
        # and saying otherwise would have a retry apply it twice; the run may not have read it.
        log.warning(
            "the edit of thread %s outlasted its claim: run %s was admitted before it was "
            "saved and may have started from the checkpoint it supersedes",
            req.thread_id,
            admitted,
        )
    return checkpoint_id


async def _release(registry: Registry, thread_id: str, until: datetime) -> None:
    """End the edit's claim (only its own: it matches `until`). A release that fails leaves
    the claim to lapse; the edit's own answer stands (a saved edit reported failed would be
    applied twice by a retry)."""
    try:
        await asyncio.shield(registry.release_edit(thread_id, until))
    except Exception:
        log.warning(
            "could not end the edit claim on thread %s; runs there wait until it lapses at %s",
            thread_id,
            until.isoformat(),
            exc_info=True,
        )


def _graph_at(graph: Pregel[Any, Any, Any, Any], namespace: str) -> Pregel[Any, Any, Any, Any]:
    """The (sub)graph whose state the namespace holds (task ids stripped, as LangGraph does)."""
    if not namespace:
        return graph
    path = "|".join(part.split(":", 1)[0] for part in namespace.split("|"))
    for name, sub in graph.get_subgraphs(namespace=path, recurse=True):
        if name == path and isinstance(sub, Pregel):
            return sub
    raise NotFoundError(f"no subgraph at namespace {namespace!r}")


def _check_update(graph: Pregel[Any, Any, Any, Any], req: UpdateState) -> None:
    """Keys LangGraph would silently drop, and a node it does not have, are refused."""
    if req.as_node is not None and req.as_node not in graph.nodes:
        known = ", ".join(sorted(n for n in graph.nodes if not n.startswith("__")))
        raise BadInputError(
            f"asNode {req.as_node!r} is not a node of the graph; its nodes: {known}"
        )
    channels = {c for c in graph.channels if not c.startswith(_INTERNAL)}
    unknown = sorted(set(req.values) - channels)
    if unknown:
        raise BadInputError(
            f"values may not set {', '.join(unknown)}: the graph's state keys are "
            f"{', '.join(sorted(channels))}"
        )
