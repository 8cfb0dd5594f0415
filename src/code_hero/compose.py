"""Composition: the one place that builds a process's parts and wires them together.

    GatewaySettings   what the parts need, read once at the edge (CLI, app factory)
    Services          the checkpointer manager, the event bus, the event log, the
                      graphs and the run executor: opened in that order as one
                      async context manager, closed in reverse
    event_bus         the bus the configured database can carry

The app's lifespan, the CLI and the tests get them through `Gateway(settings)`,
which enters its `Services` and, over them, enforces who sees and does what.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from code_hero.auth import AccessSettings
from code_hero.config import CheckpointerConfig, create_memory_checkpointer
from code_hero.errors import BackendUnavailableError
from code_hero.limits import Limits
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.registry.outbox import WebhookOutbox
from code_hero.runs.bus import POKE, InProcessBus
from code_hero.runs.eventlog import EventLog
from code_hero.runs.executor import RunExecutor
from code_hero.runs.graphs import GraphRegistry
from code_hero.runs.webhooks import WebhookDispatcher, WebhookSettings

__all__ = ["DEFAULT_TOMBSTONE_RETENTION", "GatewaySettings", "Services", "event_bus"]

DEFAULT_TOMBSTONE_RETENTION = 30 * 24 * 3600.0  # seconds: a month, far beyond any outage
# How long closing waits for a recovery's notice to the other replicas (one bus message).
_NOTICE_WAIT = 5.0


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
    event_recheck_interval: float = 2.0  # a subscriber's look at the log when nothing came
    max_message_length: int = 100_000
    max_page: int = Limits.max_page  # `first` of a listing, at most
    shutdown_grace: float = 10.0
    claim_others: bool = True  # False: execute only runs this process started (the CLI)
    max_recursion_limit: int = 100  # the most graph steps a run's config may ask for
    access: AccessSettings = field(default_factory=AccessSettings)
    # True: refuse to open unless the configured store serves (the CLI's one-shot
    # commands work on it or not at all; a server starts on its fallback instead).
    require_primary: bool = False
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    # Retention: the ttl a thread gets when none is given (None: threads never expire),
    # and the seconds between sweeps of expired threads (None: this process never sweeps).
    thread_ttl: int | None = None
    sweep_interval: float | None = 60.0
    # Seconds the sweep keeps a finished deletion's tombstone: an outage's copy-back
    # older than that (a replica cut off longer) could bring the thread back.
    tombstone_retention: float = DEFAULT_TOMBSTONE_RETENTION


def event_bus(
    manager: EnhancedCheckpointerManager, is_local: Callable[[str], bool]
) -> InProcessBus:
    """PostgreSQL LISTEN/NOTIFY across replicas when the store is PostgreSQL; else in-process.

    `is_local(run_id)` tells the bus that this process writes the run's events
    itself, so a notification about them needs no relay.
    """
    if not manager.notifies:
        return InProcessBus()
    from code_hero.runs.pgbus import PostgresBus  # psycopg: only where PostgreSQL is used

    return PostgresBus(
        manager.config.connection_string or "",
        manager.notification_pool,
        lambda: manager.registry,
        is_local,
        available=lambda: manager.router.serving,
        level_of=lambda exc: manager.router.background_level(exc),
    )


class Services:
    """The manager, bus, event log, graphs and run executor of one process."""

    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self.settings = settings or GatewaySettings()
        self.manager = EnhancedCheckpointerManager(self.settings.checkpointer)
        self.manager.max_page = self.settings.max_page
        self.bus = event_bus(self.manager, lambda run_id: self.events.is_writing(run_id))
        self.events = EventLog(
            lambda: self.manager.registry,
            self.bus,
            flush_interval=self.settings.event_flush_interval,
            recheck_interval=self.settings.event_recheck_interval,
        )
        self._graphs: GraphRegistry | None = None
        self._executor: RunExecutor | None = None
        self.webhooks = WebhookDispatcher(
            self.webhook_store,
            self.settings.webhooks,
            level_of=lambda exc: self.manager.router.background_level(exc),
        )
        self._background: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Services:
        serving = await self.manager.initialize()
        try:
            if self.settings.require_primary and not serving:
                primary = self.manager.router.primary
                raise BackendUnavailableError(
                    f"cannot open {primary.config.describe()}: "
                    f"{primary.last_error or 'unavailable'}"
                )
            self.manager.router.on_recovered.append(self._on_recovered)
            await self.bus.start()
            self._graphs = await GraphRegistry.load(
                self.manager.get_checkpointer(),
                specs=self.settings.graphs,
                default=self.settings.default_graph,
                model=self.settings.model,
            )
            # The graphs' modules are imported now: an outage file's entries holding
            # their classes can be read (held at open until then).
            await self.manager.router.retry_held()
            self._executor = RunExecutor(
                self.manager,
                self._graphs,
                self.events,
                max_concurrent=self.settings.max_concurrent_runs,
                lease_seconds=self.settings.lease_seconds,
                max_message_length=self.settings.max_message_length,
                claim_others=self.settings.claim_others,
                max_recursion_limit=self.settings.max_recursion_limit,
            )
            await self._executor.__aenter__()
            await self.webhooks.__aenter__()
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
            try:
                await self.manager.settle(self.settings.shutdown_grace)
            finally:  # a cancelled copy-back still closes everything
                await self._close_all()

    async def _close_all(self) -> None:
        """Each step in turn, whatever the one before raised (a second cancel during the
        notices' wait left the bus and the manager open); the first error is raised
        at the end."""
        first: BaseException | None = None
        for close in (
            # Before the bus closes: the copy's end pokes the other replicas'
            # subscribers (`_on_recovered`); sent, or given up on after a while.
            self._notices_sent,
            self.webhooks.close,  # attempts cut short are leased: tried again later
            self.bus.close,
            self.manager.cleanup,
        ):
            try:
                await close()
            except BaseException as exc:  # raised below, after the rest
                first = first or exc
        if first is not None:
            raise first

    async def _notices_sent(self) -> None:
        """Wait (bounded) for the notices under way to other replicas; cancel the rest."""
        pending = set(self._background)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=_NOTICE_WAIT)
        for task in late:
            task.cancel()

    def webhook_store(self) -> WebhookOutbox | None:
        """The outbox lives in the primary database only; None while it is down."""
        registry = self.manager.router.primary.backend
        if not self.manager.router.serving or registry is None:
            return None
        store = registry.registry
        return store if isinstance(store, WebhookOutbox) else None

    def _on_recovered(self) -> None:
        """An outage's events are in the database now: subscribers everywhere re-read.
        The delivery worker claims at once: the primary may be a new registry object (a
        SQLite file reopened at its path), whose enqueues wake the worker only once a
        claim there registered it; asleep until its cap, it would miss them."""
        self.webhooks.wake()
        task = asyncio.get_running_loop().create_task(self.bus.send_control(POKE))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def executor(self) -> RunExecutor:
        """The run executor (after entering the context)."""
        if self._executor is None:
            raise RuntimeError("use `async with Gateway(...)` before calling it")
        return self._executor

    @property
    def graphs(self) -> GraphRegistry:
        """The loaded graphs (after entering the context)."""
        if self._graphs is None:
            raise RuntimeError("use `async with Gateway(...)` before calling it")
        return self._graphs

    def metrics(self) -> dict[str, Any]:
        """The manager's metrics plus run and subscriber gauges."""
        snap = self.manager.metrics_snapshot()
        snap["subscribers"] = self.bus.subscriber_count
        snap["active_runs"] = self.executor.active_runs
        snap["internal_entries"] = self.internal_sizes()
        return snap

    def internal_sizes(self) -> dict[str, int]:
        """Entries in every per-run and per-thread map of this process, by map name."""
        return {
            **self.executor.internal_sizes(),
            **self.events.internal_sizes(),
            **self.bus.internal_sizes(),
            **self.manager.internal_sizes(),
        }
