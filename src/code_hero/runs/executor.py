"""The run executor: background runs, one at a time per thread, cancellable, resumable.

A run is recorded PENDING, waits for a slot (a per-process limit) and for its
thread (one run at a time per thread), becomes RUNNING and ends SUCCESS,
ERROR, INTERRUPTED or CANCELLED. Every step is checkpointed before the next
begins (`durability="sync"`), and the executor holds a lease on each run it
executes, renewed while it runs: runs found RUNNING or PENDING whose lease
lapsed (their process died) are resumed from their last checkpoint when an
executor starts, so no completed step runs twice and none is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.types import Command, StateSnapshot

from code_hero.errors import BadInputError, ConflictError, NotFoundError
from code_hero.persistence.jsonable import to_jsonable
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.records import (
    Registry,
    RunFilter,
    RunRecord,
    RunStatus,
    ThreadStatus,
)
from code_hero.runs.eventlog import EventLog, RunEventWriter
from code_hero.runs.events import STREAM_MODES, EventType, namespace_of, translate
from code_hero.runs.graphs import GraphRegistry

__all__ = ["UNSET", "MultitaskStrategy", "RunExecutor", "StartRun"]

log = logging.getLogger(__name__)
UNSET: Any = object()
THREAD_STATUS_AFTER = {
    RunStatus.SUCCESS: ThreadStatus.IDLE,
    RunStatus.CANCELLED: ThreadStatus.IDLE,
    RunStatus.ERROR: ThreadStatus.ERROR,
    RunStatus.INTERRUPTED: ThreadStatus.INTERRUPTED,
}


class MultitaskStrategy(StrEnum):
    REJECT = "REJECT"
    ENQUEUE = "ENQUEUE"
    INTERRUPT = "INTERRUPT"


@dataclass(frozen=True)
class StartRun:
    """What a caller asks for: exactly one of message, input or resume."""

    thread_id: str | None = None
    message: str | None = None
    input: Any = UNSET
    resume: Any = UNSET
    from_checkpoint_id: str | None = None
    graph: str | None = None
    user_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    multitask: MultitaskStrategy = MultitaskStrategy.REJECT
    wait: bool = False


@dataclass
class _Lane:
    """The runs of one thread in this process: the active one and the queue."""

    active: str | None = None
    queue: deque[str] = field(default_factory=deque)


class RunExecutor:
    """Executes runs in the background for one process."""

    def __init__(
        self,
        manager: EnhancedCheckpointerManager,
        graphs: GraphRegistry,
        events: EventLog,
        *,
        max_concurrent: int = 8,
        lease_seconds: float = 15.0,
        max_message_length: int = 100_000,
    ) -> None:
        self.manager = manager
        self.graphs = graphs
        self.events = events
        self.owner = f"executor-{uuid.uuid4().hex[:12]}"
        self.lease = timedelta(seconds=lease_seconds)
        self.max_message_length = max_message_length
        self._slots = asyncio.Semaphore(max_concurrent)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._lanes: dict[str, _Lane] = {}
        self._closing = False
        self._cancel_requested: set[str] = set()
        self._start_locks: dict[str, asyncio.Lock] = {}
        self._admitted: dict[str, RunRecord] = {}  # saves re-reading a run just created
        self._final: dict[str, RunRecord] = {}  # for waiters: the record _finish wrote
        self._waiters: dict[str, int] = {}
        self._lease_task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> RunExecutor:
        self._lease_task = asyncio.create_task(self._renew_leases(), name="run-leases")
        await self.recover()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop taking runs; give running ones `grace` seconds, then leave them resumable."""
        self._closing = True
        pending = [t for t in self._tasks.values() if not t.done()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()  # released, not CANCELLED: see _execute
            if still:
                await asyncio.wait(still, timeout=5)
        if self._lease_task is not None:
            self._lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lease_task
        await self.events.close()

    @property
    def registry(self) -> Registry:
        """The registry of the manager's authoritative backend."""
        return self.manager.registry

    # ---------------------------------------------------------------- start
    async def start(self, req: StartRun) -> RunRecord:
        """Validate, record PENDING and schedule; with `wait`, return the final run."""
        if self._closing:
            raise ConflictError("the server is shutting down and takes no new runs")
        if req.resume is not UNSET:
            req = await self._continuing(req)
        graph_name = req.graph or self.graphs.default
        self.graphs.get(graph_name)
        given = [
            name
            for name, value in (("message", req.message), ("input", req.input))
            if value is not UNSET and value is not None
        ] + (["resume"] if req.resume is not UNSET else [])
        if len(given) != 1:
            raise BadInputError(
                "give exactly one of message, input or resume"
                + (f" (got {', '.join(given)})" if given else "")
            )
        run_input = self._input_for(req, graph_name)
        thread_id = req.thread_id or str(uuid.uuid4())
        # One start at a time per thread: the busy check and the enqueue are one step.
        lock = self._start_locks.setdefault(thread_id, asyncio.Lock())
        async with lock:
            record = await self._admit(req, thread_id, graph_name, run_input)
        if not lock.locked():
            self._start_locks.pop(thread_id, None)
        if req.wait:
            return await self.wait(record.run_id)
        return record

    async def _admit(
        self, req: StartRun, thread_id: str, graph_name: str, run_input: Any
    ) -> RunRecord:
        thread = await self.registry.get_thread(thread_id)
        if req.resume is not UNSET and (
            thread is None or thread.status is not ThreadStatus.INTERRUPTED
        ):
            raise ConflictError(f"thread {thread_id!r} is not interrupted: nothing to resume")
        if req.from_checkpoint_id:
            found = await self.manager.get_checkpoint(thread_id, req.from_checkpoint_id)
            if found is None:
                raise NotFoundError(
                    f"checkpoint {req.from_checkpoint_id!r} is not in thread {thread_id!r}"
                )
        lane = self._lanes.get(thread_id)
        busy = lane and (lane.active or (lane.queue[0] if lane.queue else None))
        if busy:
            if req.multitask is MultitaskStrategy.REJECT:
                raise ConflictError(
                    f"thread {thread_id!r} is busy with run {busy!r}; "
                    "use multitask ENQUEUE or INTERRUPT"
                )
            if req.multitask is MultitaskStrategy.INTERRUPT and lane is not None:
                for run_id in [*lane.queue, *([lane.active] if lane.active else [])]:
                    await self.cancel(run_id)
        run_id = str(uuid.uuid4())
        await self.registry.upsert_thread(thread_id, user_id=req.user_id, status=ThreadStatus.BUSY)
        self.manager.router.note_touched(thread_id)
        config = dict(req.config)
        if req.from_checkpoint_id:
            config["checkpoint_id"] = req.from_checkpoint_id
        record = await self.registry.create_run(
            RunRecord(
                run_id=run_id,
                thread_id=thread_id,
                graph=graph_name,
                status=RunStatus.PENDING,
                input=to_jsonable(run_input if req.resume is UNSET else {"resume": req.resume}),
                metadata=dict(req.metadata),
                config=config,
                user_id=req.user_id,
                multitask=req.multitask.value,
            )
        )
        writer = await self.events.writer(run_id, thread_id, new=True)
        writer.emit(EventType.STATUS, {"status": RunStatus.PENDING.value, "error": None})
        self._done[run_id] = asyncio.Event()
        self._admitted[run_id] = record
        # Fetched again: the awaits above may have let a finished run drop the lane.
        self._lanes.setdefault(thread_id, _Lane()).queue.append(run_id)
        self._pump(thread_id)
        return record

    async def _continuing(self, req: StartRun) -> StartRun:
        """A resume carries on the interrupted run: its graph and config unless given."""
        if req.thread_id is None:
            raise BadInputError("resume needs the threadId of the interrupted thread")
        page = await self.registry.list_runs(
            RunFilter(thread_id=req.thread_id, status=RunStatus.INTERRUPTED), first=1
        )
        if not page.items:
            return req
        last = page.items[0]
        config = {k: v for k, v in last.config.items() if k != "checkpoint_id"}
        return replace(
            req,
            graph=req.graph or last.graph,
            config={**config, **req.config},
            user_id=req.user_id or last.user_id,
        )

    def _input_for(self, req: StartRun, graph_name: str) -> Any:
        keys = self.graphs.input_keys(graph_name)
        if req.message is not None:
            if not isinstance(req.message, str) or not req.message.strip():
                raise BadInputError("message must be a non-empty string")
            if len(req.message) > self.max_message_length:
                raise BadInputError(
                    f"message is {len(req.message)} characters; "
                    f"the limit is {self.max_message_length}"
                )
            if keys is not None and "messages" not in keys:
                raise BadInputError(f"graph {graph_name!r} takes no messages; send `input` instead")
            return {"messages": [{"role": "user", "content": req.message}]}
        if req.input is not UNSET and req.input is not None:
            if not isinstance(req.input, Mapping):
                raise BadInputError("input must be a JSON object of the graph's state keys")
            unknown = set(req.input) - keys if keys is not None else set()
            if unknown:
                raise BadInputError(
                    f"graph {graph_name!r} does not take {', '.join(sorted(unknown))}; "
                    f"its input keys are {', '.join(sorted(keys or ()))}"
                )
            return dict(req.input)
        return None

    # ---------------------------------------------------------------- scheduling
    def _pump(self, thread_id: str) -> None:
        """Start the next queued run of a thread when the thread is free."""
        lane = self._lanes.get(thread_id)
        if lane is None or lane.active is not None:
            return
        if not lane.queue:
            self._lanes.pop(thread_id, None)
            return
        run_id = lane.queue.popleft()
        lane.active = run_id
        self._tasks[run_id] = asyncio.create_task(self._execute(run_id), name=f"run-{run_id}")

    async def wait(self, run_id: str, limit: float | None = None) -> RunRecord:
        """The run once it has ended (or as it is when `limit` seconds pass)."""
        done = self._done.get(run_id)
        if done is not None:
            self._waiters[run_id] = self._waiters.get(run_id, 0) + 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), limit)
            finally:
                self._waiters[run_id] -= 1
                if not self._waiters[run_id]:
                    del self._waiters[run_id]
            final = self._final.get(run_id) if done.is_set() else None
            if final is not None:
                if run_id not in self._waiters:
                    self._final.pop(run_id, None)
                return final
        record = await self.registry.get_run(run_id)
        if record is None:
            raise NotFoundError(f"no run {run_id!r}")
        return record

    def is_active(self, run_id: str) -> bool:
        """True while this process has the run queued or executing."""
        return run_id in self._done and not self._done[run_id].is_set()

    async def cancel(self, run_id: str) -> RunRecord:
        """Stop a run promptly and record CANCELLED (a finished run is returned as is)."""
        record = await self.registry.get_run(run_id)
        if record is None:
            raise NotFoundError(f"no run {run_id!r}")
        if record.status.finished:
            return record
        lane = self._lanes.get(record.thread_id)
        if lane is not None and run_id in lane.queue:
            lane.queue.remove(run_id)
            await self._finish(run_id, record.thread_id, RunStatus.CANCELLED, None, None)
            self._pump(record.thread_id)
            return await self.wait(run_id)
        task = self._tasks.get(run_id)
        if task is not None and not task.done():
            self._cancel_requested.add(run_id)
            task.cancel()
            await asyncio.wait({task}, timeout=5)
            return await self.wait(run_id)
        # Not executing here (its process is gone): record the cancel directly.
        await self._finish(run_id, record.thread_id, RunStatus.CANCELLED, None, None)
        return await self.wait(run_id)

    # ---------------------------------------------------------------- execution
    async def _execute(self, run_id: str, *, resuming: bool = False) -> None:
        record = self._admitted.pop(run_id, None) or await self.registry.get_run(run_id)
        assert record is not None
        thread_id = record.thread_id
        writer = await self.events.writer(run_id, thread_id)
        status, output, error = RunStatus.ERROR, None, None
        try:
            async with self._slots:
                if self._closing:
                    raise asyncio.CancelledError("shutting down")
                await self.registry.update_run(
                    run_id,
                    status=RunStatus.RUNNING,
                    started_at=record.started_at or datetime.now(UTC),
                    lease_owner=self.owner,
                    lease_expires_at=datetime.now(UTC) + self.lease,
                )
                writer.emit(EventType.STATUS, {"status": RunStatus.RUNNING.value, "error": None})
                status, output, error = await self._stream(record, writer, resuming)
        except asyncio.CancelledError:
            if self._closing and run_id not in self._cancel_requested:
                # Shutdown: leave the run RUNNING with its lease released, so the
                # next executor resumes it from its last checkpoint.
                with contextlib.suppress(Exception):
                    await self.registry.update_run(run_id, lease_owner=None, lease_expires_at=None)
                await writer.close()
                self._release(run_id, thread_id)
                return
            status = RunStatus.CANCELLED
        except Exception as exc:
            log.exception("run %s failed", run_id)
            status, error = RunStatus.ERROR, f"{type(exc).__name__}: {exc}"
        await self._finish(run_id, thread_id, status, output, error, writer)
        self._release(run_id, thread_id)

    async def _stream(
        self, record: RunRecord, writer: RunEventWriter, resuming: bool
    ) -> tuple[RunStatus, Any, str | None]:
        graph = self.graphs.get(record.graph)
        configurable = {**record.config, "thread_id": record.thread_id, "run_id": record.run_id}
        if record.user_id:
            configurable["user_id"] = record.user_id
        if resuming:
            configurable.pop("checkpoint_id", None)
        config: RunnableConfig = {
            "configurable": configurable,
            "metadata": {"run_id": record.run_id, **dict(record.metadata)},
            "recursion_limit": int(record.config.get("recursion_limit", 50)),
        }
        run_input: Any
        if resuming:
            run_input = None
        elif isinstance(record.input, Mapping) and set(record.input) == {"resume"}:
            run_input = Command(resume=record.input["resume"])
        else:
            run_input = _with_messages(record.input)
        interrupted = False
        values: Any = None
        async for ns, mode, data in graph.astream(
            run_input,
            config,
            stream_mode=STREAM_MODES,  # type: ignore[arg-type]
            subgraphs=True,
            durability="sync",
        ):
            if mode == "values":
                if not ns:
                    values = data
                continue
            if mode == "updates" and "__interrupt__" in data:
                interrupted = True
            for type_, payload in translate(ns, mode, data):
                writer.emit(type_, payload)
        if not interrupted:
            return RunStatus.SUCCESS, to_jsonable(values), None
        # Subgraph states cost a read each: only an interrupt needs them (to name the node).
        state_config: RunnableConfig = {"configurable": {"thread_id": record.thread_id}}
        state = await graph.aget_state(state_config, subgraphs=True)
        interrupts = list(_interrupts(state))
        if interrupts:
            for node, namespace, value in interrupts:
                writer.emit(
                    EventType.INTERRUPT,
                    {"node": node, "namespace": namespace, "value": to_jsonable(value)},
                )
            return RunStatus.INTERRUPTED, None, None
        return RunStatus.SUCCESS, to_jsonable(state.values), None

    async def _finish(
        self,
        run_id: str,
        thread_id: str,
        status: RunStatus,
        output: Any,
        error: str | None,
        writer: RunEventWriter | None = None,
    ) -> None:
        writer = writer or await self.events.writer(run_id, thread_id)
        writer.emit(EventType.STATUS, {"status": status.value, "error": error})
        await writer.close()
        final = await self.registry.update_run(
            run_id,
            status=status,
            output=output,
            error=error,
            finished_at=datetime.now(UTC),
            lease_owner=None,
            lease_expires_at=None,
        )
        if final is not None and run_id in self._waiters:
            self._final[run_id] = final
        lane = self._lanes.get(thread_id)
        if lane is None or not lane.queue:  # a queued run keeps the thread BUSY
            await self.registry.set_thread_status(thread_id, THREAD_STATUS_AFTER[status])

    def _release(self, run_id: str, thread_id: str) -> None:
        self._tasks.pop(run_id, None)
        self._admitted.pop(run_id, None)
        self._cancel_requested.discard(run_id)
        done = self._done.pop(run_id, None)
        if done is not None:
            done.set()
        lane = self._lanes.get(thread_id)
        if lane is not None and lane.active == run_id:
            lane.active = None
        if not self._closing:
            self._pump(thread_id)

    # ---------------------------------------------------------------- leases
    async def _renew_leases(self) -> None:
        interval = max(self.lease.total_seconds() / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            expires = datetime.now(UTC) + self.lease
            for run_id in list(self._tasks):
                try:
                    await self.registry.update_run(run_id, lease_expires_at=expires)
                except Exception as exc:
                    log.warning("renewing the lease of run %s failed: %s", run_id, exc)

    async def recover(self) -> int:
        """Resume runs left RUNNING or PENDING by a process that is gone; returns how many."""
        now = datetime.now(UTC)
        orphans: list[RunRecord] = []
        for status in (RunStatus.RUNNING, RunStatus.PENDING):
            after = None
            while True:
                page = await self.registry.list_runs(
                    RunFilter(status=status), first=100, after=after
                )
                orphans += [
                    r
                    for r in page.items
                    if r.run_id not in self._done
                    and (r.lease_expires_at is None or r.lease_expires_at < now)
                ]
                if not page.has_next_page:
                    break
                after = page.end_cursor
        for record in sorted(orphans, key=lambda r: (r.created_at or now, r.run_id)):
            claimed = await self.registry.update_run(
                record.run_id, lease_owner=self.owner, lease_expires_at=now + self.lease
            )
            if claimed is None:
                continue
            log.info("resuming run %s of thread %s", record.run_id, record.thread_id)
            self._done[record.run_id] = asyncio.Event()
            lane = self._lanes.setdefault(record.thread_id, _Lane())
            if record.status is RunStatus.RUNNING and lane.active is None:
                lane.active = record.run_id
                self._tasks[record.run_id] = asyncio.create_task(
                    self._execute(record.run_id, resuming=True), name=f"run-{record.run_id}"
                )
            else:
                lane.queue.append(record.run_id)
                self._pump(record.thread_id)
        return len(orphans)


def _with_messages(run_input: Any) -> Any:
    """Message dicts from JSON input as LangChain messages (a plain user turn)."""
    if isinstance(run_input, Mapping) and isinstance(run_input.get("messages"), list):
        converted = [
            HumanMessage(m["content"])
            if isinstance(m, Mapping) and m.get("role") in ("user", "human") and "content" in m
            else m
            for m in run_input["messages"]
        ]
        return {**run_input, "messages": converted}
    return run_input


def _interrupts(state: StateSnapshot, namespace: str = "") -> list[tuple[str, str, Any]]:
    """(node, namespace, value) of every pending interrupt, from the deepest subgraph."""
    found: list[tuple[str, str, Any]] = []
    for task in state.tasks:
        sub = task.state
        if isinstance(sub, StateSnapshot):
            ns = namespace_of([p for p in (namespace, f"{task.name}:{task.id}") if p])
            deeper = _interrupts(sub, ns)
            if deeper:
                found += deeper
                continue
        found += [(task.name, namespace, i.value) for i in task.interrupts]
    return found
