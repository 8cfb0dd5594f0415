"""The gateway's one facade: what resolvers and the CLI call.

`Gateway` owns, as one async context manager, the checkpointer manager, the
graph registry, the event log and bus, and the run executor. Every read and
write of the GraphQL layer goes through it, and through it to the manager.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from psycopg_pool import AsyncConnectionPool

from code_hero.config import CheckpointerConfig, create_memory_checkpointer
from code_hero.errors import BackendUnavailableError, BadInputError, NotFoundError
from code_hero.persistence.backends import PostgresBackend
from code_hero.persistence.checkpoints import CheckpointView
from code_hero.persistence.manager import MAX_PAGE, EnhancedCheckpointerManager, ThreadDeletion
from code_hero.persistence.records import (
    EventRecord,
    Page,
    RunFilter,
    RunRecord,
    ThreadFilter,
    ThreadRecord,
)
from code_hero.runs.bus import InProcessBus
from code_hero.runs.eventlog import EventLog
from code_hero.runs.executor import RunExecutor, StartRun
from code_hero.runs.graphs import GraphInfo, GraphRegistry
from code_hero.runs.pgbus import PostgresBus

__all__ = ["Gateway", "GatewaySettings"]


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway needs, read once at the edge (CLI, app factory)."""

    checkpointer: CheckpointerConfig = field(default_factory=create_memory_checkpointer)
    graphs: Mapping[str, str] = field(default_factory=dict)
    default_graph: str | None = None
    model: str | None = None
    max_concurrent_runs: int = 8
    lease_seconds: float = 15.0
    event_flush_interval: float = 0.025
    max_message_length: int = 100_000
    shutdown_grace: float = 10.0
    claim_others: bool = True  # False: execute only runs this process started (the CLI)


class Gateway:
    """Threads, checkpoints, runs, events and health, for one process."""

    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self.settings = settings or GatewaySettings()
        self.manager = EnhancedCheckpointerManager(self.settings.checkpointer)
        self.bus = self._make_bus()
        self.events = EventLog(
            lambda: self.manager.registry,
            self.bus,
            flush_interval=self.settings.event_flush_interval,
        )
        self._graphs: GraphRegistry | None = None
        self._executor: RunExecutor | None = None

    def _make_bus(self) -> InProcessBus:
        """PostgreSQL LISTEN/NOTIFY across replicas; in-process wake-ups otherwise."""
        config = self.settings.checkpointer
        if config.kind != "postgres" or not config.connection_string:
            return InProcessBus()

        def pool() -> AsyncConnectionPool[Any]:
            backend = self.manager.router.primary.backend
            if not isinstance(backend, PostgresBackend):
                raise BackendUnavailableError("PostgreSQL is unavailable")
            return backend.pool

        return PostgresBus(
            config.connection_string,
            pool,
            lambda: self.manager.registry,
            lambda run_id: self.events.is_writing(run_id),
        )

    async def __aenter__(self) -> Gateway:
        await self.manager.initialize()
        try:
            await self.bus.start()
            self._graphs = await GraphRegistry.load(
                self.manager.get_checkpointer(),
                specs=self.settings.graphs,
                default=self.settings.default_graph,
                model=self.settings.model,
            )
            self._executor = RunExecutor(
                self.manager,
                self._graphs,
                self.events,
                max_concurrent=self.settings.max_concurrent_runs,
                lease_seconds=self.settings.lease_seconds,
                max_message_length=self.settings.max_message_length,
                claim_others=self.settings.claim_others,
            )
            await self._executor.__aenter__()
        except BaseException:
            await self.bus.close()
            await self.manager.cleanup()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._executor is not None:
                await self._executor.shutdown(self.settings.shutdown_grace)
        finally:
            await self.bus.close()
            await self.manager.cleanup()

    @property
    def executor(self) -> RunExecutor:
        """The run executor (after entering the context)."""
        if self._executor is None:
            raise RuntimeError("use `async with Gateway(...)` before calling it")
        return self._executor

    @property
    def graph_registry(self) -> GraphRegistry:
        """The loaded graphs."""
        if self._graphs is None:
            raise RuntimeError("use `async with Gateway(...)` before calling it")
        return self._graphs

    # ------------------------------------------------------------ health
    async def health(self) -> dict[str, Any]:
        """The manager's health report."""
        return await self.manager.health_check()

    def metrics(self) -> dict[str, Any]:
        """The manager's metrics plus run and subscriber gauges."""
        snap = self.manager.metrics_snapshot()
        snap["subscribers"] = self.bus.subscriber_count
        snap["active_runs"] = sum(1 for r in self.executor._tasks if self.executor.is_active(r))
        return snap

    # ------------------------------------------------------------ threads
    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        """One thread, or None."""
        return await self.manager.get_thread(thread_id)

    async def get_threads(self, thread_ids: Sequence[str]) -> dict[str, ThreadRecord]:
        """Several threads in one query."""
        return await self.manager.registry.get_threads(thread_ids)

    async def threads_page(
        self, flt: ThreadFilter | None = None, *, first: int = 20, after: str | None = None
    ) -> Page[ThreadRecord]:
        """Threads newest updated first."""
        return await self.manager.threads_page(flt, first=first, after=after)

    async def delete_thread(self, thread_id: str) -> ThreadDeletion:
        """Cancel the thread's runs, then delete it everywhere."""
        runs = await self.manager.registry.list_runs(RunFilter(thread_id=thread_id), first=MAX_PAGE)
        for run in runs.items:
            if not run.status.finished:
                await self.executor.cancel(run.run_id)
        return await self.manager.purge_thread(thread_id)

    # ------------------------------------------------------------ checkpoints
    async def get_checkpoint(
        self, thread_id: str, checkpoint_id: str | None = None, namespace: str = ""
    ) -> CheckpointView | None:
        """The latest checkpoint of a namespace, or one by id."""
        return await self.manager.get_checkpoint(thread_id, checkpoint_id, namespace)

    async def list_checkpoints(
        self, thread_id: str, *, namespace: str = "", first: int = 20, after: str | None = None
    ) -> Page[CheckpointView]:
        """History newest first."""
        return await self.manager.list_checkpoints(
            thread_id, namespace=namespace, first=first, after=after
        )

    # ------------------------------------------------------------ runs
    async def start_run(self, request: StartRun) -> RunRecord:
        """Start (or queue) a run; with `request.wait`, its final record."""
        return await self.executor.start(request)

    async def cancel_run(self, run_id: str) -> RunRecord:
        """Cancel a run (a finished one is returned unchanged)."""
        return await self.executor.cancel(run_id)

    async def delete_run(self, run_id: str) -> bool:
        """Cancel the run if it is going, then delete it and its events."""
        run = await self.manager.registry.get_run(run_id)
        if run is None:
            return False
        if not run.status.finished:
            await self.executor.cancel(run_id)
        return bool(await self.manager.registry.delete_run(run_id))

    async def get_run(self, run_id: str) -> RunRecord | None:
        """One run, or None."""
        return await self.manager.registry.get_run(run_id)

    async def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """Several runs in one query."""
        return await self.manager.registry.get_runs(run_ids)

    async def runs_page(
        self, flt: RunFilter | None = None, *, first: int = 20, after: str | None = None
    ) -> Page[RunRecord]:
        """Runs newest first."""
        _check_first(first)
        return await self.manager.registry.list_runs(flt or RunFilter(), first=first, after=after)

    async def run_events(
        self, run_id: str, *, after_seq: int = 0, first: int = 100
    ) -> list[EventRecord]:
        """The recorded events of a run after a sequence number."""
        if after_seq < 0:
            raise BadInputError("afterSeq must be 0 or more")
        _check_first(first, limit=1000)
        return await self.events.read(run_id, after_seq=after_seq, limit=first)

    async def follow_run(self, run_id: str, *, after_seq: int = 0) -> AsyncIterator[EventRecord]:
        """Replay after `after_seq`, then live events until the run ends."""
        if after_seq < 0:
            raise BadInputError("afterSeq must be 0 or more")
        if await self.get_run(run_id) is None:
            raise NotFoundError(f"no run {run_id!r}")

        async def finished() -> bool:
            run = await self.get_run(run_id)
            return run is None or run.status.finished

        return self.events.follow_run(run_id, after_seq=after_seq, is_finished=finished)

    async def follow_thread(self, thread_id: str) -> AsyncIterator[EventRecord]:
        """Every event of every run on the thread from now on."""
        if await self.get_thread(thread_id) is None:
            raise NotFoundError(f"no thread {thread_id!r}")
        return self.events.follow_thread(thread_id)

    def graphs(self) -> list[GraphInfo]:
        """The loaded graphs with their agents."""
        return self.graph_registry.info()


def _check_first(first: int, limit: int = MAX_PAGE) -> None:
    if first < 1 or first > limit:
        raise BadInputError(f"first must be between 1 and {limit}, got {first}")
