"""`EnhancedCheckpointerManager`: one manager over every checkpoint backend.

It opens the configured primary with a fallback (in memory, or a SQLite file
with the outage journal beside it: `fallback_path`, `outagefile.py`) and an
emergency memory saver behind it, hands graphs a `ManagedSaver`, probes the backends in
the background and heals back to the primary, and serves the reads the
gateway needs: threads from the registry, checkpoints and history with keyset
paging, deletion, retention and metrics.

`health()` tells what the background probe last saw without touching a
database (a `HealthReport`; `health_report()` is its dict), so a liveness
check answers at once while a database hangs; `health_check()` and
`probe_health()` probe now (each probe bounded) and then report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver

from code_hero import __version__
from code_hero.config import (
    CheckpointerConfig,
    config_for_environment,
    create_memory_checkpointer,
    create_sqlite_checkpointer,
)
from code_hero.errors import BackendUnavailableError, BadInputError, ConflictError
from code_hero.limits import Limits
from code_hero.persistence.adoption import Adoptions
from code_hero.persistence.backends import Backend
from code_hero.persistence.checkpoints import (
    CheckpointView,
    decode_checkpoint_cursor,
    encode_checkpoint_cursor,
    view_of,
)
from code_hero.persistence.fallback import FallbackRouter
from code_hero.persistence.fallback_registry import FallbackRegistry
from code_hero.persistence.health import HealthReport, report_of, status_of
from code_hero.persistence.managed import ManagedSaver
from code_hero.persistence.metrics import Metrics
from code_hero.persistence.outagefile import OutageFile
from code_hero.persistence.records import (
    DeletionMark,
    Page,
    Registry,
    ThreadFilter,
    ThreadOrder,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.persistence.slots import BackendSlot
from code_hero.persistence.transfer import copy_thread_checkpoints

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from code_hero.persistence.pg_backend import PostgresBackend

__all__ = ["EnhancedCheckpointerManager", "PruneReport", "ThreadDeletion"]


@dataclass(frozen=True)
class ThreadDeletion:
    """What deleting a thread removed."""

    thread_id: str
    # The thread existed and is gone, by this call or by a deletion of the mark it made or
    # joined that ended first (the counts are this call's alone).
    deleted: bool
    checkpoints_deleted: int
    runs_deleted: int
    # Not deleted: it has runs in flight (a one-step deletion leaves it for the two steps).
    busy: bool = False
    # Not deleted: an edit holds it (`Registry.claim_edit`) for milliseconds.
    edited: bool = False


@dataclass(frozen=True)
class PruneReport:
    """What a retention pass removed."""

    threads_deleted: int
    checkpoints_deleted: int
    runs_deleted: int


class EnhancedCheckpointerManager:
    """Checkpointing with fallback, health checks, recovery, listing and metrics."""

    def __init__(
        self,
        config: CheckpointerConfig | None = None,
        *,
        environment: str = "development",
        logger_service: Any = None,
        memory_manager: Any = None,
    ) -> None:
        self.config = config if config is not None else config_for_environment(environment)
        self.environment = environment
        self.logger: Any = logger_service or logging.getLogger("code_hero.checkpointing")
        self.memory_manager = memory_manager
        self.metrics = Metrics()
        # `first` of a page, at most: the configured Limits.max_page (the gateway sets it).
        self.max_page = Limits.max_page
        self.started_at = time.monotonic()
        self._router: FallbackRouter | None = None
        self._registry: FallbackRegistry | None = None
        self._saver: ManagedSaver | None = None
        self._health_task: asyncio.Task[None] | None = None
        # The fallback files of dead replicas this server adopts (a durable fallback's).
        self.adoptions: Adoptions | None = None
        self.health_status: dict[str, Any] = {
            "primary_healthy": False,
            "fallback_healthy": False,
            "active_backend": None,
            "last_check": None,
        }

    # ------------------------------------------------------------ lifecycle
    async def initialize(self) -> bool:
        """Open the backends (or retry the primary); True when the primary serves."""
        if self._router is None:
            slots = [BackendSlot("primary", self.config)]
            store: OutageFile | None = None
            if self.config.enable_fallback:
                fallback = create_memory_checkpointer()
                if self.config.fallback_path:
                    # A durable fallback: a SQLite file of this process's own, its journal
                    # beside it (`outagefile.py`); what a dead process left is resumed.
                    store = await OutageFile.claim_off_loop(
                        self.config.fallback_path, self.config.describe()
                    )
                    self.logger.info(
                        "durable outage fallback: %s (its journal: %s.entries)",
                        store.path.resolve(),
                        store.path.resolve(),
                    )
                    fallback = create_sqlite_checkpointer(  # health names it whole
                        str(store.path.resolve()), sqlite_cache_kib=self.config.sqlite_cache_kib
                    )
                slots.append(BackendSlot("fallback", fallback))
                slots.append(BackendSlot("emergency", create_memory_checkpointer()))
            self._router = FallbackRouter(
                slots,
                self.metrics,
                journal_limit=self.config.max_pending_sync,
                probe_interval=self.config.health_check_interval,
                store=store,
            )
            self._registry = FallbackRegistry(self._router)
            await self._router.open()
            if store is not None:
                # In the background: a dead replica's file waits no longer than a probe.
                router = self._router
                self.adoptions = Adoptions(
                    self.config, store.path, serving=lambda: router.active == 0
                )
                self.adoptions.poke()
            self._saver = ManagedSaver(self._router, asyncio.get_running_loop())
            self._health_task = asyncio.create_task(self._health_loop(), name="checkpoint-health")
            if self._router.active == 0:
                self.logger.info("checkpointing on %s", self.config.describe())
        else:
            await self._router.check()
        self._refresh_status()
        return self._router.active == 0

    async def settle(self, grace: float) -> bool:
        """Before closing: copy what a fallback holds back to the primary if the primary
        answers now, for at most `grace` seconds, then what the dead replicas' files
        adopted hold for what is left of it; True when nothing of this server's own
        outage is left behind (an adopted file's rest stays in it for the next server)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        settled = await self._settle_own(grace)
        if self.adoptions is not None:  # while the primary serves, the own part took nothing
            await self.adoptions.settle(max(0.0, deadline - loop.time()))
        return settled

    async def _settle_own(self, grace: float) -> bool:
        router = self._router
        if router is None or router.active in (0, None) or not router.pending_sync:
            return True
        # What a fallback holds lives in this process's memory only: a server told to
        # stop once the database is back (a rolling restart after an outage) would drop
        # it if it waited for the next probe, or cut short a copy under way.
        try:
            # Given up on, not awaited, past the grace: psycopg waits up to 10 s more
            # on a query cancelled on a server gone silent.
            await router.calls.run(router.check(), grace, "the copy-back before closing")
        except TimeoutError:
            pass
        except Exception:
            self.logger.exception("copying the outage's writes back before closing failed")
        self._refresh_status()
        if router.active == 0:
            return True
        if router.store is not None and router.journal.durable:
            self.logger.warning(
                "closing with the copy-back unfinished: %d outage writes (%d quarantined) "
                "on %d threads wait in %s for the next server started with this setting",
                len(router.journal),
                len(router.journal.quarantine),
                len(router.journal.threads()),
                router.store.path,
            )
            return False
        # Lost with this process's memory: what the operator needs to know it lost.
        self.logger.error(
            "closing with the copy-back unfinished: %d outage writes (%d quarantined) on "
            "%d threads are lost with this process (runs ended in the outage and not "
            "copied yet are missing from the database, with their checkpoints)",
            len(router.journal),
            len(router.journal.quarantine),
            len(router.journal.threads()),
        )
        return False

    async def cleanup(self) -> None:
        """Stop the health probe and close every backend."""
        task, self._health_task = self._health_task, None
        if task is not None:
            # Forgotten first: the loop ends at its next turn even if an await drops the
            # cancel (Python 3.11's wait_for, in psycopg_pool's getconn).
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        adoptions, self.adoptions = self.adoptions, None
        try:
            if adoptions is not None:
                await adoptions.close()
        finally:  # the own router closed whatever an adopted file's close raised
            await self._close_router()

    async def _close_router(self) -> None:
        if self._router is not None:
            if self._router.pending_sync:
                self.logger.warning(
                    "closing with %d checkpoint writes not yet copied to the primary",
                    self._router.pending_sync,
                )
            await self._router.close()
            self._router = None
            self._registry = None
            self._saver = None
        self._refresh_status()

    async def __aenter__(self) -> EnhancedCheckpointerManager:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cleanup()

    async def _health_loop(self) -> None:
        while self._health_task is asyncio.current_task():
            await asyncio.sleep(self.config.health_check_interval)
            try:
                assert self._router is not None
                await self._router.check()
            except Exception:
                self.logger.exception("checkpoint health check failed")
            self._refresh_status()
            if self.adoptions is not None:
                self.adoptions.poke()

    @property
    def router(self) -> FallbackRouter:
        """The fallback router (raises before initialize())."""
        if self._router is None:
            raise BackendUnavailableError("the checkpointer manager is not initialized")
        return self._router

    # ------------------------------------------------------------ the seed's API
    def get_checkpointer(self) -> BaseCheckpointSaver[Any]:
        """The checkpointer to compile graphs with (falls back transparently)."""
        if self._saver is None:
            raise BackendUnavailableError(
                "call `await manager.initialize()` before get_checkpointer()"
            )
        return self._saver

    def create_thread_config(self, thread_id: str, **kwargs: Any) -> RunnableConfig:
        """A run config for the thread; keyword arguments go into `configurable`."""
        if not thread_id or not isinstance(thread_id, str):
            raise BadInputError("thread_id must be a non-empty string")
        return {"configurable": {"thread_id": thread_id, **kwargs}}

    def health(self) -> HealthReport:
        """What the last probes saw, as one model; no database I/O (raises before initialize())."""
        return self._report(self.router)

    def _report(self, router: FallbackRouter | None) -> HealthReport:
        uptime = time.monotonic() - self.started_at
        return report_of(
            router, uptime_seconds=uptime, version=__version__, adoptions=self.adoptions
        )

    async def probe_health(self) -> HealthReport:
        """Probe every backend now (heal back to the primary when it answers), then report."""
        # Each probe and each open of the primary is bounded (pool_timeout and
        # three times that): a hung server fails the probe, it does not hang it.
        await self.router.check()
        self._refresh_status()
        if self.adoptions is not None:
            self.adoptions.poke()  # a dead replica's file, looked for in the background
        return self.health()

    async def health_check(self) -> dict[str, Any]:
        """Probe every backend now and report (overall_status, per-backend entries)."""
        return (await self.probe_health()).to_dict()

    def health_report(self) -> dict[str, Any]:
        """What the last probes saw, as health_check() reports it; no database I/O."""
        return self.health().to_dict()

    @property
    def overall_status(self) -> str:
        """healthy (primary serves), degraded (a fallback serves) or unhealthy (none)."""
        return status_of(self._router)

    @property
    def notifies(self) -> bool:
        """True when the store can carry notifications between replicas (PostgreSQL)."""
        return self.config.kind == "postgres" and bool(self.config.connection_string)

    def notification_pool(self) -> AsyncConnectionPool[Any]:
        """The pool that carries NOTIFY (a PostgreSQL primary); unavailable while it is down."""
        backend = self.router.primary.backend
        if backend is None or backend.kind != "postgres" or not self.router.serving:
            raise self.router.unavailable("notifying other replicas")
        return cast("PostgresBackend", backend).pool

    @property
    def pending_sync(self) -> int:
        """Writes held by a fallback, not yet copied back to the primary."""
        return 0 if self._router is None else self._router.pending_sync

    def _refresh_status(self) -> None:
        self.health_status.update(self._report(self._router).status_dict(datetime.now(UTC)))

    # ------------------------------------------------------------ registry
    @property
    def registry(self) -> Registry:
        """Threads, runs and events: the primary's, or what a fallback holds during an outage."""
        if self._registry is None:
            raise BackendUnavailableError("the checkpointer manager is not initialized")
        return self._registry

    def _serving_backend(self, what: str) -> Backend:
        """The primary backend, for work that needs all of its data."""
        router = self.router
        if not router.serving or router.primary.backend is None:
            raise router.unavailable(what)
        return router.primary.backend

    async def list_threads(self, **filters: Any) -> list[dict[str, Any]]:
        """Threads newest first: user_id, status, metadata, updated_after/before, limit, after."""
        limit = int(filters.pop("limit", 10))
        after = filters.pop("after", None)
        page = await self.threads_page(_thread_filter(filters), first=limit, after=after)
        return [_thread_dict(t) for t in page.items]

    async def threads_page(
        self,
        flt: ThreadFilter | None = None,
        *,
        first: int = 20,
        after: str | None = None,
        order: ThreadOrder | None = None,
    ) -> Page[ThreadRecord]:
        """One keyset page of threads, newest updated first unless `order` says otherwise."""
        _check_first(first, self.max_page)
        return await self.registry.list_threads(
            flt or ThreadFilter(), first=first, after=after, order=order or ThreadOrder()
        )

    async def get_thread(self, thread_id: str) -> ThreadRecord | None:
        """One thread of the registry."""
        return await self.registry.get_thread(thread_id)

    async def delete_thread(self, thread_id: str) -> bool:
        """Delete a thread everywhere; False when it did not exist."""
        return (await self.purge_thread(thread_id)).deleted

    async def purge_thread(self, thread_id: str) -> ThreadDeletion:
        """Delete checkpoints (every namespace), writes, blobs, runs and events of a thread;
        nothing while an edit holds it (`edited`)."""
        mark = await self.start_deletion(thread_id)
        if mark is None:
            return ThreadDeletion(thread_id, False, 0, 0, edited=True)
        return await self.end_deletion(thread_id, mark)

    async def start_deletion(self, thread_id: str) -> DeletionMark | None:
        """Mark the thread's row for deletion (`Registry.start_deletion`): from now on no
        run is admitted on it (`ThreadBeingDeletedError`); the mark, for `end_deletion`,
        or None while an edit holds it."""
        return await self.registry.start_deletion(thread_id)

    async def end_deletion(self, thread_id: str, mark: DeletionMark) -> ThreadDeletion:
        """The last step of a deletion that `start_deletion` began (`mark`):
        delete the thread everywhere, unless a thread made anew under the id holds it now
        (its row not marked with its token: another deletion ended this one meanwhile, a
        client created it again, and maybe another deletion marked that one, which stops
        its runs before it ends it); each step checks that in its own transaction, and
        leaves such a thread alone. The thread was deleted if it had a row to mark:
        another deletion may have ended it first (one that joined the mark, the one this
        one joined, a one-step deletion of the marked row), and a row made anew since is
        another thread."""
        router, token = self.router, mark.token
        # The router counts what it deletes: the primary in its delete (no count query
        # before: issue 15), a thread born in an outage or kept across a recovery under
        # the lock a last step takes, so two deletions of one mark count it once (None:
        # not this deletion's to count, none went).
        checkpoints = await router.delete_thread(thread_id, marked=token) or 0
        existed, runs = await self.registry.delete_thread(thread_id, marked=token)
        deleted = mark.marked or existed or checkpoints > 0
        return ThreadDeletion(thread_id, deleted, checkpoints, runs)

    async def purge_orphan(self, thread_id: str) -> bool:
        """Delete the checkpoints of a thread the registry has no row of, an expired one
        included (a run of it may go on elsewhere); False when it has one (a thread made
        anew under the id: nothing deleted)."""
        router = self.router
        purged = await router.purge_orphan(thread_id)
        if purged is not None:
            return purged
        # In two steps (an outage, a fallback's copies of it): the row, then the rest.
        if await self.registry.get_thread(thread_id, expired=True) is not None:
            return False
        await router.delete_thread(thread_id)
        return True

    async def purge_idle_thread(
        self, thread_id: str, *, live_at: datetime | None = None, owner: str | None = None
    ) -> ThreadDeletion | None:
        """`purge_thread` in one round trip where the store has it, for a thread with no
        unfinished runs; not deleted when it had expired at `live_at` or (with `owner`)
        is not that user's. `busy`: it has unfinished runs (stop them, then
        `purge_thread`); `edited`: an edit holds it (nothing deleted); None: the store
        deletes in steps, nothing was checked."""
        gone = await self.router.purge_idle_thread(thread_id, live_at, owner)
        if gone is None:
            return None
        if gone.foreign or gone.expired:
            return ThreadDeletion(thread_id, False, 0, 0)
        if gone.busy or gone.edited:
            return ThreadDeletion(thread_id, False, 0, 0, busy=gone.busy, edited=gone.edited)
        return ThreadDeletion(
            thread_id, gone.existed or gone.checkpoints > 0, gone.checkpoints, gone.runs
        )

    async def create_thread(
        self, thread: ThreadRecord, *, new_thread: bool = False
    ) -> ThreadRecord | None:
        """Insert a new thread; None when its id is taken. During an outage only one with
        a fresh id (`new_thread`) or a thread's born in it (`FallbackLifecycle`)."""
        if self._registry is None:
            raise BackendUnavailableError("the checkpointer manager is not initialized")
        return await self._registry.create_thread(thread, new_thread=new_thread)

    async def copy_thread(self, source_id: str, target: ThreadRecord) -> ThreadRecord:
        """A new thread (`target`) with every checkpoint, pending write and namespace of
        `source_id`, copied a page at a time; no runs. During an outage only of a thread
        born in it: the copy is born there too, and both are copied back in order."""
        if not self.router.serving:
            return await self._copy_in_outage(source_id, target)
        backend = self._serving_backend("copying a thread")
        created = await self.create_thread(target)
        if created is None:  # a fresh UUID: only a bug makes it collide
            raise ConflictError(f"thread {target.thread_id!r} already exists")
        try:
            namespaces = await backend.checkpoint_namespaces(source_id)
            await copy_thread_checkpoints(backend.saver, source_id, target.thread_id, namespaces)
        except BaseException:
            # No half copy is left behind: the caller sees the error and tries again.
            await asyncio.shield(self.purge_thread(target.thread_id))
            raise
        return created

    async def _copy_in_outage(self, source_id: str, target: ThreadRecord) -> ThreadRecord:
        """`copy_thread` of a thread born in the outage: through the managed saver, so each
        checkpoint and write is journalled behind the copy's row (`CopyThread`), and
        reads and writes go wherever the threads live if the switch back falls inside."""
        router = self.router
        if not router.is_local(source_id):
            raise router.unavailable("copying this thread")
        created = await self.create_thread(target, new_thread=True)
        if created is None:  # a fresh UUID: only a bug makes it collide
            raise ConflictError(f"thread {target.thread_id!r} already exists")
        try:
            namespaces = await self._namespaces_in_outage(source_id)
            saver = self.get_checkpointer()
            await copy_thread_checkpoints(saver, source_id, target.thread_id, namespaces)
        except BaseException:
            await asyncio.shield(self.purge_thread(target.thread_id))
            raise
        return created

    async def _namespaces_in_outage(self, thread_id: str) -> list[str]:
        """The namespaces of a thread born in the outage, from the fallback, or from the
        primary once the switch back came (the fallback forgets its copies then)."""
        slot = self.router.active_slot
        if slot is not None and slot is not self.router.primary and slot.backend is not None:
            found = await slot.backend.checkpoint_namespaces(thread_id)
            if not self.router.serving:  # read before the switch, so before the forgetting
                return found
        return await self._serving_backend("copying this thread").checkpoint_namespaces(thread_id)

    async def keep_latest(self, thread_id: str, keep: int) -> int:
        """Delete all but the newest `keep` checkpoints of each of the thread's namespaces
        (their writes and unreferenced blobs too), sparing the checkpoints its unfinished
        runs were asked to start from (forks), and nothing of a thread an edit holds
        (`Backend.keep_latest`); UNAVAILABLE during an outage."""
        backend = self._serving_backend("pruning checkpoints")
        async with self.router.on_primary("pruning checkpoints"):
            return await backend.keep_latest(thread_id, keep)

    # ------------------------------------------------------------ checkpoints
    async def get_checkpoint(
        self, thread_id: str, checkpoint_id: str | None = None, namespace: str = ""
    ) -> CheckpointView | None:
        """The latest checkpoint of a thread's namespace, or the one with that id."""
        configurable: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": namespace}
        if checkpoint_id:
            configurable["checkpoint_id"] = checkpoint_id
        item = await self.router.read_tuple({"configurable": configurable})
        return None if item is None else view_of(item)

    async def get_checkpoints(
        self, thread_id: str, checkpoint_ids: Sequence[str], namespace: str = ""
    ) -> dict[str, CheckpointView]:
        """The checkpoints of a thread's namespace with these ids that exist, by id."""
        ids = list(dict.fromkeys(checkpoint_ids))
        # No saver reads several ids at once; the reads run side by side (a
        # SaverPool lends a saver to each).
        views = await asyncio.gather(*(self.get_checkpoint(thread_id, i, namespace) for i in ids))
        return {i: v for i, v in zip(ids, views, strict=True) if v is not None}

    async def list_checkpoints(
        self, thread_id: str, *, namespace: str = "", first: int = 20, after: str | None = None
    ) -> Page[CheckpointView]:
        """History newest first; `after` is a cursor from a previous page."""
        _check_first(first, self.max_page)
        before = None
        if after:
            before_id = decode_checkpoint_cursor(after, thread_id, namespace)
            before = {"configurable": {"checkpoint_id": before_id}}
        items = await self.router.read_list(
            {"configurable": {"thread_id": thread_id, "checkpoint_ns": namespace}},
            before=before,  # type: ignore[arg-type]
            limit=first + 1,
        )
        views = [view_of(i) for i in items[:first]]
        last = views[-1].checkpoint_id if views else None
        end = encode_checkpoint_cursor(thread_id, namespace, last) if last else None
        return Page(views, end, len(items) > first)

    async def count_checkpoints(self, thread_id: str, *, namespace: str = "") -> int:
        """How many checkpoints a thread's namespace has (UNAVAILABLE when its history is
        out of reach, as a listing of it would be)."""
        return await self.router.count_checkpoints(
            thread_id, namespace, what="counting this thread's checkpoints"
        )

    # ------------------------------------------------------------ retention
    async def prune(
        self, *, older_than: datetime | None = None, keep_latest: int | None = None
    ) -> PruneReport:
        """Delete threads not updated since `older_than`; keep the newest N checkpoints."""
        if older_than is None and keep_latest is None:
            raise BadInputError("prune needs older_than, keep_latest or both")
        if keep_latest is not None and keep_latest < 1:
            raise BadInputError("keep_latest must be at least 1")
        threads = checkpoints = runs = 0
        backend = self._serving_backend("pruning")
        if older_than is not None:
            if older_than.tzinfo is None:
                older_than = older_than.replace(tzinfo=UTC)
            async with self.router.on_primary("pruning"):
                old = await backend.registry.thread_ids(updated_before=older_than)
            for thread_id in old:
                gone = await self.purge_thread(thread_id)
                threads += int(gone.deleted)
                checkpoints += gone.checkpoints_deleted
                runs += gone.runs_deleted
        if keep_latest is not None:
            async with self.router.on_primary("pruning"):
                ids = set(await backend.registry.thread_ids()) | set(
                    await backend.checkpoint_thread_ids()
                )
            for thread_id in sorted(ids):
                checkpoints += await self.keep_latest(thread_id, keep_latest)
        return PruneReport(threads, checkpoints, runs)

    def internal_sizes(self) -> dict[str, int]:
        """Entries in the router's and the registry's per-thread and per-run maps."""
        if self._router is None or self._registry is None:
            return {}
        return {**self._router.internal_sizes(), **self._registry.internal_sizes()}

    def metrics_snapshot(self) -> dict[str, Any]:
        """Counts, latencies, errors and switches, as plain data."""
        snap = self.metrics.snapshot()
        snap["pending_sync"] = self.pending_sync
        snap["quarantined"] = 0 if self._router is None else self._router.quarantined
        snap["overall_status"] = self.overall_status
        adoptions = self.adoptions
        files = [] if adoptions is None else adoptions.files()
        snap["adopted_files"] = len(files)
        snap["adopted_pending_sync"] = sum(f.pending_sync + f.quarantined for f in files)
        snap["adoptions_copied"] = 0 if adoptions is None else adoptions.copied
        snap["adoption_failures"] = 0 if adoptions is None else adoptions.failures
        return snap


def _check_first(first: int, limit: int) -> None:
    if first < 1 or first > limit:
        raise BadInputError(f"first must be between 1 and {limit}, got {first}")


def _parse_time(value: Any, name: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise BadInputError(f"{name} must be an ISO 8601 time, got {value!r}") from None


def _thread_filter(filters: Mapping[str, Any]) -> ThreadFilter:
    known = {"user_id", "status", "metadata", "updated_after", "updated_before"}
    unknown = set(filters) - known
    if unknown:
        raise BadInputError(f"unknown thread filter(s): {', '.join(sorted(unknown))}")
    status = filters.get("status")
    try:
        status = ThreadStatus(str(status).upper()) if status is not None else None
    except ValueError:
        raise BadInputError(f"unknown thread status {status!r}") from None
    metadata = filters.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise BadInputError("metadata filter must be a JSON object")
    return ThreadFilter(
        user_id=filters.get("user_id"),
        status=status,
        metadata=metadata,
        updated_after=_parse_time(filters.get("updated_after"), "updated_after"),
        updated_before=_parse_time(filters.get("updated_before"), "updated_before"),
    )


def _thread_dict(record: ThreadRecord) -> dict[str, Any]:
    return {
        "thread_id": record.thread_id,
        "user_id": record.user_id,
        "status": record.status.value,
        "metadata": dict(record.metadata),
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }
