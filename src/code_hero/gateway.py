"""The gateway's one facade: what resolvers and the CLI call.

`Gateway` is an async context manager over the process's `Services` (the
checkpointer manager, the graph registry, the event log and bus, the run
executor; built in `code_hero.compose`). Every read and write of the GraphQL
layer and of the CLI goes through it, and through it to the manager.

It is also the one place where access is enforced. Every method that touches
threads, runs, checkpoints or events takes the `caller` (default: the open
mode's ANONYMOUS, which sees everything) and
- shows a user only the threads it owns, with their runs, checkpoints and
  events; another user's thread looks exactly like a missing one (null, an
  empty page, NOT_FOUND, `deleted: false`), never FORBIDDEN;
- lists threads and runs filtered by owner in SQL, so pages stay pages;
- refuses a `userId` that names another user (FORBIDDEN) and records the
  caller's own user id on the runs and threads it creates;
- lets administrators see and act on everything;
- asks the access policy (hook, rate limit; see `code_hero.auth.policy`).

It is also where what a caller sends is checked (`code_hero.inputs`), before
any I/O: every method that takes one thread, run or checkpoint id refuses a
malformed one with BAD_USER_INPUT naming the argument as the schema does, and
text with a NUL is refused wherever it would reach the database.
The batch look-ups (`get_threads`, `get_runs`, `latest_checkpoints`) serve
the DataLoaders with ids read from stored records and are not checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from code_hero.auth import ANONYMOUS, AccessPolicy, Action, Caller
from code_hero.checkpoint_access import CheckpointAccess, check_first
from code_hero.compose import GatewaySettings, Services
from code_hero.errors import (
    BackendUnavailableError,
    BadInputError,
    ForbiddenError,
    NotFoundError,
    RunHeldUpError,
    ThreadBeingDeletedError,
)
from code_hero.filters import check_run_filter, check_thread_filter
from code_hero.inputs import check_checkpoint_id, check_run_id, check_thread_id
from code_hero.persistence import clock
from code_hero.persistence.diagnosis import public_health
from code_hero.persistence.manager import (
    EnhancedCheckpointerManager,
    PruneReport,
    ThreadDeletion,
)
from code_hero.persistence.records import (
    EventRecord,
    Page,
    RunFilter,
    RunOrder,
    RunRecord,
    RunStatus,
    ThreadFilter,
    ThreadOrder,
    ThreadRecord,
)
from code_hero.persistence.registry.edits import being_edited
from code_hero.persistence.stats import RunStats, TimeBucket
from code_hero.runs.bus import InProcessBus
from code_hero.runs.eventlog import EventLog
from code_hero.runs.events import EventType, event_types
from code_hero.runs.executor import RunExecutor
from code_hero.runs.graphs import GraphInfo, GraphRegistry
from code_hero.runs.requests import UNSET, StartRun, check_request_text
from code_hero.runs.waits import Waits
from code_hero.thread_admin import ThreadAdmin
from code_hero.webhook_access import WebhookAccess

__all__ = ["Gateway", "GatewaySettings"]

# No filter given (a plain thread list): checked once here, not made and checked again
# for every request (frozen, so one serves them all).
_EVERY_THREAD = check_thread_filter(ThreadFilter())


class Gateway(ThreadAdmin, CheckpointAccess, WebhookAccess):
    """Threads, checkpoints, runs, events and health, for one process (thread editing and
    retention in `ThreadAdmin`, checkpoints and state edits in `CheckpointAccess`,
    webhooks in `WebhookAccess`)."""

    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self.settings = settings or GatewaySettings()
        self.policy = AccessPolicy(self.settings.access)
        self.services = Services(self.settings)

    async def __aenter__(self) -> Gateway:
        await self.services.__aenter__()
        self._start_sweeper()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_sweeper()
        await self.services.__aexit__(exc_type, exc, tb)

    @property
    def manager(self) -> EnhancedCheckpointerManager:
        """The checkpointer manager."""
        return self.services.manager

    @property
    def bus(self) -> InProcessBus:
        """The event bus."""
        return self.services.bus

    @property
    def events(self) -> EventLog:
        """The run event log."""
        return self.services.events

    @property
    def executor(self) -> RunExecutor:
        """The run executor (after entering the context)."""
        return self.services.executor

    @property
    def graph_registry(self) -> GraphRegistry:
        """The loaded graphs (after entering the context)."""
        return self.services.graphs

    def stop_waiting(self, waits: Waits | None = None) -> None:
        """The server begins to stop: every `startRun(wait)` begun with `waits` (by
        default, those begun without one) is answered now (UNAVAILABLE naming its run,
        retryAfter the shutdown's grace) rather than when its run ends."""
        (self.executor.waits if waits is None else waits).stop(self.settings.shutdown_grace)

    def spend_reads(self, caller: Caller, cost: int) -> None:
        """Spend a read's query cost from the caller's read rate limit (RATE_LIMITED when out)."""
        self.policy.spend_reads(caller, cost)

    # ------------------------------------------------------------ health
    async def health(self) -> dict[str, Any]:
        """The manager's health report as the background probe last saw it (no database I/O)."""
        # Never probe on the request path: a liveness check must answer while a
        # database hangs, or the process is restarted and its fallback lost.
        return self.manager.health_report()

    async def health_for(self, caller: Caller | None) -> dict[str, Any]:
        """`health()` as this caller may see it: driver text for authenticated admins only.

        Everyone else, the open mode's anonymous caller and `/healthz` (None)
        included, sees each `last_error` as a category and no backend URL:
        the text names hosts, ports, databases and roles.
        """
        report = await self.health()
        if caller is not None and caller.is_admin and not caller.anonymous:
            return report
        return public_health(report)

    def metrics(self) -> dict[str, Any]:
        """The manager's metrics plus run and subscriber gauges."""
        return self.services.metrics()

    def internal_sizes(self) -> dict[str, int]:
        """Entries in every per-run and per-thread map of this process, by map name."""
        return self.services.internal_sizes()

    # ------------------------------------------------------------ access
    async def _owns(self, thread_id: str, caller: Caller) -> bool:
        """True when the caller may see the thread (administrators: unless it expired)."""
        if caller.is_admin:
            return not await self._expired([thread_id])
        thread = await self.manager.get_thread(thread_id)
        return thread is not None and caller.sees(thread.user_id)

    async def _may(self, caller: Caller, action: Action, thread_id: str, **more: Any) -> bool:
        """Ownership, then the access policy's hook."""
        return await self._owns(thread_id, caller) and await self.policy.allows(
            caller, action, thread_id=thread_id, **more
        )

    def _user_for(self, caller: Caller, named: str | None) -> str | None:
        """The user id a request acts as: the caller's own; administrators may name anyone."""
        if caller.is_admin:
            return named or caller.user_id
        if named is not None and named != caller.user_id:
            raise ForbiddenError("userId may only name the caller's own user")
        return caller.user_id

    async def _visible_runs(
        self, runs: Mapping[str, RunRecord], caller: Caller
    ) -> dict[str, RunRecord]:
        if caller.is_admin:
            expired = await self._expired(list({r.thread_id for r in runs.values()}))
            runs = {k: r for k, r in runs.items() if r.thread_id not in expired}
        else:
            threads = await self.manager.registry.get_threads(
                list({r.thread_id for r in runs.values()})
            )
            runs = {
                k: r
                for k, r in runs.items()
                if r.thread_id in threads and caller.sees(threads[r.thread_id].user_id)
            }
        if self.policy.hook is None:
            return dict(runs)
        return {
            k: r
            for k, r in runs.items()
            if await self.policy.allows(
                caller, Action.RUN_READ, thread_id=r.thread_id, run_id=r.run_id
            )
        }

    async def _owned_run(self, run_id: str, caller: Caller) -> RunRecord | None:
        """The run, if it exists on a thread the caller may see."""
        run = await self.manager.registry.get_run(run_id)
        if run is None or not await self._owns(run.thread_id, caller):
            return None
        return run

    # ------------------------------------------------------------ threads
    async def get_thread(
        self, thread_id: str, *, caller: Caller = ANONYMOUS
    ) -> ThreadRecord | None:
        """One thread, or None (also when the caller may not see it)."""
        thread_id = check_thread_id(thread_id, "id")
        found = await self.get_threads([thread_id], caller=caller)
        return found.get(thread_id)

    async def get_threads(
        self, thread_ids: Sequence[str], *, caller: Caller = ANONYMOUS
    ) -> dict[str, ThreadRecord]:
        """Several threads in one query: those the caller may see."""
        found = await self.manager.registry.get_threads(thread_ids)
        return {
            k: t
            for k, t in found.items()
            if caller.sees(t.user_id)
            and await self.policy.allows(caller, Action.THREAD_READ, thread_id=k)
        }

    async def _thread_query(self, flt: ThreadFilter | None, caller: Caller) -> ThreadFilter | None:
        """The filter as the caller may ask it (a user's own threads only); None: denied."""
        flt = _EVERY_THREAD if flt is None else check_thread_filter(flt)
        if not caller.is_admin:
            flt = replace(flt, user_id=self._user_for(caller, flt.user_id))
        if self.policy.hook is not None and not await self.policy.allows(
            caller, Action.THREAD_SEARCH, value=asdict(flt)
        ):
            return None
        return flt

    async def threads_page(
        self,
        flt: ThreadFilter | None = None,
        *,
        first: int = 20,
        after: str | None = None,
        order: ThreadOrder | None = None,
        caller: Caller = ANONYMOUS,
    ) -> Page[ThreadRecord]:
        """Threads newest updated first, or in `order` (a user's own only: the owner is
        part of the query)."""
        check_first(first, self.settings.max_page)
        query = await self._thread_query(flt, caller)
        if query is None:
            return Page([], None, False)
        return await self.manager.threads_page(query, first=first, after=after, order=order)

    async def threads_count(
        self, flt: ThreadFilter | None = None, *, caller: Caller = ANONYMOUS
    ) -> int:
        """How many threads `threads_page` would page through: one count in SQL, the owner
        part of it."""
        query = await self._thread_query(flt, caller)
        return 0 if query is None else await self.manager.registry.count_threads(query)

    async def delete_thread(self, thread_id: str, *, caller: Caller = ANONYMOUS) -> ThreadDeletion:
        """Cancel the thread's runs, then delete it everywhere; CONFLICT (retryAfter) while
        an edit holds it."""
        self.policy.spend(caller, Action.THREAD_DELETE)
        thread_id = check_thread_id(thread_id, "id")
        if self.policy.hook is None:
            # Nothing to ask between the ownership check and the deletion: the checks
            # (has it expired? is it the user's?) are part of the one-step deletion.
            owner = None if caller.is_admin else caller.user_id
            gone = await self._purge(thread_id, live_at=clock.now(), owner=owner)
        elif not await self._owns(thread_id, caller):
            return ThreadDeletion(thread_id, False, 0, 0)
        else:
            await self.policy.require(caller, Action.THREAD_DELETE, thread_id=thread_id)
            gone = await self._purge(thread_id)
        if gone.edited:
            raise being_edited(thread_id)
        return gone

    async def prune(
        self,
        *,
        older_than: datetime | None = None,
        keep_latest: int | None = None,
        caller: Caller = ANONYMOUS,
    ) -> PruneReport:
        """Delete the threads not updated since `older_than` as `delete_thread` does (their
        runs stopped first); keep only the newest `keep_latest` checkpoints of each thread.

        Administrators only. A thread the access hook refuses to delete is kept.
        """
        self.policy.spend(caller, Action.THREAD_DELETE)
        if not caller.is_admin:
            raise ForbiddenError("only administrators prune")
        if older_than is None and keep_latest is None:
            raise BadInputError("prune needs older_than, keep_latest or both")
        if keep_latest is not None and keep_latest < 1:
            raise BadInputError("keep_latest must be at least 1")
        threads = checkpoints = runs = 0
        if older_than is not None:
            if older_than.tzinfo is None:
                older_than = older_than.replace(tzinfo=UTC)
            for thread_id in await self.manager.registry.thread_ids(updated_before=older_than):
                if not await self.policy.allows(caller, Action.THREAD_DELETE, thread_id=thread_id):
                    continue
                gone = await self._purge(thread_id)
                threads += int(gone.deleted)
                checkpoints += gone.checkpoints_deleted
                runs += gone.runs_deleted
        if keep_latest is not None:
            checkpoints += (await self.manager.prune(keep_latest=keep_latest)).checkpoints_deleted
        return PruneReport(threads, checkpoints, runs)

    # ------------------------------------------------------------ runs
    async def start_run(
        self, request: StartRun, *, caller: Caller = ANONYMOUS, waits: Waits | None = None
    ) -> RunRecord:
        """Start (or queue) a run; with `request.wait`, its final record, or UNAVAILABLE
        naming it once `waits` (its server's: see `stop_waiting`) is stopped.

        A user may start runs only on a new thread or on one it owns (another
        user's thread is NOT_FOUND); the run and a new thread get its user id.
        """
        if not request.wait:
            return await self._start_run(request, caller, waits)
        # Followed from its first step: a stop while the run is admitted answers it too.
        with (self.executor.waits if waits is None else waits).starting():
            return await self._start_run(request, caller, waits)

    async def _start_run(self, request: StartRun, caller: Caller, waits: Waits | None) -> RunRecord:
        self.policy.spend(caller, Action.RUN_CREATE)
        if request.thread_id is not None:
            thread_id = check_thread_id(request.thread_id)
            request = replace(request, thread_id=thread_id)
            await self._reap_if_expired(thread_id)  # an expired thread starts afresh
        if request.from_checkpoint_id is not None:
            checkpoint_id = check_checkpoint_id(request.from_checkpoint_id, "fromCheckpointId")
            request = replace(request, from_checkpoint_id=checkpoint_id)
        if request.graph == "":  # no graph, not the default one (leave it out for that)
            raise BadInputError(
                'graph "" names no graph: name a loaded graph, or leave graph out for the '
                f"default one ({self.graph_registry.default})"
            )
        check_request_text(request)
        if request.webhook is not None:
            request = replace(request, webhook=self.check_run_webhook(request.webhook))
        user_id = self._user_for(caller, request.user_id)
        if not caller.anonymous:
            request = replace(request, user_id=user_id)
        if not caller.is_admin:
            request = replace(request, owner=caller.user_id)
            if request.thread_id is not None and not await self._may_start_on(
                request.thread_id, caller
            ):
                raise NotFoundError(f"no thread {request.thread_id!r}")
        await self.policy.require(
            caller,
            Action.RUN_CREATE,
            thread_id=request.thread_id,
            value={
                "graph": request.graph or self.graph_registry.default,
                "user_id": request.user_id,
                "resume": request.resume is not UNSET,
            },
        )
        try:
            run = await self.executor.start(request, waits)
        except ThreadBeingDeletedError:
            if (
                request.thread_id is None
                # During an outage the deletion is one of a thread born in it, under way
                # here: CONFLICT, retry (ending it from here raced it: chaos seed 69).
                or not self.manager.router.serving
                # Looked at again now, as the reap above does (no longer marked: its
                # deletion ended, and the thread may be another's now): CONFLICT, retry.
                or not await self._expired([request.thread_id])
            ):
                raise
            # A deletion marked the thread and has not ended (under way since after the
            # reap above looked, or cut short by an outage the reap could not see
            # through): ended first, as the reap does, the run starts on a fresh thread,
            # which that deletion's last step leaves alone (`end_deletion`).
            await self._purge(request.thread_id)
            run = await self.executor.start(request, waits)
        if self.settings.thread_ttl is not None:
            await self.manager.registry.default_ttl(run.thread_id, self.settings.thread_ttl)
        return run

    async def _may_start_on(self, thread_id: str, caller: Caller) -> bool:
        thread = await self.manager.get_thread(thread_id)
        if thread is not None:
            return caller.sees(thread.user_id)
        # A thread with history but no owner on record (written outside the
        # gateway) is nobody's to take over.
        return await self.manager.get_checkpoint(thread_id) is None

    async def cancel_run(self, run_id: str, *, caller: Caller = ANONYMOUS) -> RunRecord:
        """Cancel a run (a finished one is returned unchanged)."""
        self.policy.spend(caller, Action.RUN_CANCEL)
        run_id = check_run_id(run_id, "id")
        run = await self._owned_run(run_id, caller)
        if run is None:
            raise NotFoundError(f"no run {run_id!r}")
        await self.policy.require(caller, Action.RUN_CANCEL, thread_id=run.thread_id, run_id=run_id)
        return await self.executor.cancel(run_id)

    async def delete_run(self, run_id: str, *, caller: Caller = ANONYMOUS) -> bool:
        """Cancel the run if it is going, then delete it and its events."""
        self.policy.spend(caller, Action.RUN_DELETE)
        run_id = check_run_id(run_id, "id")
        run = await self._owned_run(run_id, caller)
        if run is None:
            return False
        await self.policy.require(caller, Action.RUN_DELETE, thread_id=run.thread_id, run_id=run_id)
        if not run.status.finished:
            await self.executor.cancel(run_id)
        return bool(await self.manager.registry.delete_run(run_id))

    async def get_run(self, run_id: str, *, caller: Caller = ANONYMOUS) -> RunRecord | None:
        """One run, or None (also when the caller may not see its thread)."""
        run_id = check_run_id(run_id, "id")
        run = await self._owned_run(run_id, caller)
        if run is None or not await self.policy.allows(
            caller, Action.RUN_READ, thread_id=run.thread_id, run_id=run_id
        ):
            return None
        return run

    async def get_runs(
        self, run_ids: Sequence[str], *, caller: Caller = ANONYMOUS
    ) -> dict[str, RunRecord]:
        """Several runs in one query (and their threads' owners in one more, for users)."""
        return await self._visible_runs(await self.manager.registry.get_runs(run_ids), caller)

    async def _run_query(self, flt: RunFilter | None, caller: Caller) -> RunFilter | None:
        """The filter as the caller may ask it (runs on its own threads only); None: denied."""
        flt = flt or RunFilter()
        if flt.thread_id is not None:
            flt = replace(flt, thread_id=check_thread_id(flt.thread_id))
        flt = check_run_filter(flt)
        if not caller.is_admin:
            self._user_for(caller, flt.user_id)  # FORBIDDEN when it names someone else
            flt = replace(flt, owner=caller.user_id)
        if self.policy.hook is not None and not await self.policy.allows(
            caller, Action.RUN_SEARCH, thread_id=flt.thread_id, value=asdict(flt)
        ):
            return None
        return flt

    async def runs_page(
        self,
        flt: RunFilter | None = None,
        *,
        first: int = 20,
        after: str | None = None,
        order: RunOrder | None = None,
        caller: Caller = ANONYMOUS,
    ) -> Page[RunRecord]:
        """Runs newest first, or in `order` (a user's: those on its threads, the owner part
        of the query)."""
        check_first(first, self.settings.max_page)
        query = await self._run_query(flt, caller)
        if query is None:
            return Page([], None, False)
        return await self.manager.registry.list_runs(
            query, first=first, after=after, order=order or RunOrder()
        )

    async def runs_count(self, flt: RunFilter | None = None, *, caller: Caller = ANONYMOUS) -> int:
        """How many runs `runs_page` would page through: one count in SQL, the owner part
        of it."""
        query = await self._run_query(flt, caller)
        return 0 if query is None else await self.manager.registry.count_runs(query)

    async def run_stats(
        self,
        flt: RunFilter | None = None,
        *,
        bucket: TimeBucket | None = None,
        caller: Caller = ANONYMOUS,
    ) -> RunStats:
        """Statistics of the runs `runs_page` would page through (the owner part of the
        query), computed in SQL; with `bucket`, a series over the created range."""
        query = await self._run_query(flt, caller)
        return RunStats() if query is None else await self.manager.registry.run_stats(query, bucket)

    async def run_events(
        self, run_id: str, *, after_seq: int = 0, first: int = 100, caller: Caller = ANONYMOUS
    ) -> list[EventRecord]:
        """The recorded events of a run after a sequence number."""
        run_id = check_run_id(run_id)
        if after_seq < 0:
            raise BadInputError("afterSeq must be 0 or more")
        check_first(first, limit=1000)
        if (not caller.is_admin or self.policy.hook is not None) and await self.get_run(
            run_id, caller=caller
        ) is None:
            return []
        return await self.events.read(run_id, after_seq=after_seq, limit=first)

    async def follow_run(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        types: Iterable[str] | None = None,
        caller: Caller = ANONYMOUS,
    ) -> AsyncIterator[EventRecord]:
        """Replay after `after_seq`, then live events until the run ends (of `types` only,
        when given)."""
        run_id = check_run_id(run_id)
        if after_seq < 0:
            raise BadInputError("afterSeq must be 0 or more")
        wanted = event_types(types)
        run = await self._owned_run(run_id, caller)
        if run is None or not await self.policy.allows(
            caller, Action.RUN_SUBSCRIBE, thread_id=run.thread_id, run_id=run_id
        ):
            raise NotFoundError(f"no run {run_id!r}")
        if run.status.finished and after_seq > 0:
            await self._check_not_past_the_end(run, after_seq)
        return self._follow(run_id, after_seq, wanted)

    async def _check_not_past_the_end(self, run: RunRecord, after_seq: int) -> None:
        """BadInputError for an `afterSeq` past a finished run's last event: no client saw
        that seq, and a stream that sent nothing would read as a cut one. (At the last
        event itself the stream just completes: that client has seen the end.) Skipped
        when the log cannot be read (an outage): the stream answers for itself then."""
        with contextlib.suppress(BackendUnavailableError):
            last = await self.manager.registry.last_seq(run.run_id)
            if after_seq > last:
                raise BadInputError(
                    f"afterSeq {after_seq} is past run {run.run_id}'s last event ({last}): "
                    f"the run ended {run.status.value}; read it with run(id)"
                )

    async def stream_run(
        self,
        request: StartRun,
        *,
        types: Iterable[str] | None = None,
        caller: Caller = ANONYMOUS,
    ) -> AsyncIterator[EventRecord]:
        """Start a run as `start_run` does (`wait` ignored) and follow it from its first
        event (seq 1) until it ends.

        Everything that can refuse it does so before the run starts: the filter,
        the mutation rate limit, the input, ownership, the hook (run.create, then
        run.subscribe on the thread). The first event is stored with the run itself,
        so following from seq 0 misses nothing however soon the run goes on.
        """
        wanted = event_types(types)
        if self.policy.hook is not None:  # the run has no id yet: asked about its thread
            thread_id = request.thread_id
            await self.policy.require(
                caller,
                Action.RUN_SUBSCRIBE,
                thread_id=None if thread_id is None else check_thread_id(thread_id),
            )
        run = await self.start_run(replace(request, wait=False), caller=caller)
        return _naming_the_run(run.run_id, self._follow(run.run_id, 0, wanted))

    def _follow(
        self, run_id: str, after_seq: int, types: frozenset[EventType] | None
    ) -> AsyncIterator[EventRecord]:
        async def status() -> RunStatus | None:
            run = await self.manager.registry.get_run(run_id)
            return None if run is None else run.status

        return self.events.follow_run(run_id, after_seq=after_seq, status_of=status, types=types)

    async def follow_thread(
        self, thread_id: str, *, caller: Caller = ANONYMOUS
    ) -> AsyncIterator[EventRecord]:
        """Every event of every run on the thread from now on."""
        thread_id = check_thread_id(thread_id)
        thread = await self.manager.get_thread(thread_id)
        if (
            thread is None
            or not caller.sees(thread.user_id)
            or not await self.policy.allows(caller, Action.THREAD_SUBSCRIBE, thread_id=thread_id)
        ):
            raise NotFoundError(f"no thread {thread_id!r}")
        return self.events.follow_thread(thread_id)

    def graphs(self) -> list[GraphInfo]:
        """The loaded graphs with their agents."""
        return self.graph_registry.info()


async def _naming_the_run(
    run_id: str, stream: AsyncIterator[EventRecord]
) -> AsyncIterator[EventRecord]:
    """`stream`, its outage errors naming the run: a stream that started the run may
    fail before its first event, and a client not told which run is recorded would
    start another by retrying."""
    try:
        async for event in stream:
            yield event
    except RunHeldUpError:
        raise
    except BackendUnavailableError as exc:
        message = f"run {run_id} is recorded, but {exc}: follow that run (run, runEvents)"
        raise RunHeldUpError(
            f"{message} rather than starting another", exc.retry_after, run_id
        ) from None
    finally:
        aclose = getattr(stream, "aclose", None)  # a generator: unsubscribes from the bus
        if aclose is not None:
            await aclose()
