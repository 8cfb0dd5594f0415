"""The run executor: runs claimed from the registry, one at a time per thread.

A run is recorded PENDING (with its first event) by whichever process was
asked; every executor sharing the database claims runs from the runs table
(`code_hero.runs.claims`: claims, leases, cancels), so runs of one thread
execute one at a time in the order they were asked for, across replicas.

Every step is checkpointed before the next begins (`durability="sync"`), so
when a lease lapses (its process died or froze) another executor claims the
run and resumes it from its last checkpoint: no completed step runs twice,
none is skipped, and its events go on numbering after the last stored one. A run
that died before its first checkpoint (the checkpoints' metadata names their
run) starts afresh, with its input, fork point or resume answer.

Wake-ups travel on the bus: a new run or a freed thread ("runs") makes every
executor try to claim; "cancel RUN_ID" reaches the executor that runs it. The
lease renewal and a slow poll carry the same news when a message is lost. A run
started where a slot is free needs no claim: it is admitted claimed by this
executor (unless its thread has an older unfinished run) and launched at once.
What a caller may ask (`StartRun`) and how it is checked is `code_hero.runs.requests`.

A run claimed just before the primary became unreachable, whose rows or thread
it needs before it can go on, is released rather than failed: it starts (or
resumes) once the primary is back, and a caller waiting for it meanwhile is
told UNAVAILABLE with `retryAfter`, not left waiting for the outage's end.
So is a caller waiting for a run's end once the server it asked begins to stop
(`code_hero.runs.waits`): the run is drained or handed on by the shutdown, and the
waiting request must not hold the server's stop until the run ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncGenerator, Awaitable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar, cast

from langchain_core.messages import HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph._internal._constants import CONFIG_KEY_STRICT_RESUME
from langgraph.errors import UnknownInterruptError
from langgraph.types import Command, StateSnapshot

from code_hero.errors import (
    BadInputError,
    CodeHeroError,
    ConflictError,
    NotFoundError,
    RunHeldUpError,
)
from code_hero.persistence import clock
from code_hero.persistence.changes import GRAPH_ID_KEY
from code_hero.persistence.contention import (
    CONTENTION_RETRY_AFTER,
    cancelled_by_database,
    contention,
    from_store,
)
from code_hero.persistence.fallback import PrimaryUnreachableError, to_its_end
from code_hero.persistence.journal import JournalFullError
from code_hero.persistence.jsonable import to_jsonable
from code_hero.persistence.managed import fresh_thread, telling_saves
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.records import (
    THREAD_STATUS_AFTER,
    EventRecord,
    MultitaskStrategy,
    Registry,
    RunRecord,
    RunStatus,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.persistence.unreachable import is_refused_value
from code_hero.persistence.webhooks import RUN_WEBHOOK_KEY
from code_hero.runs.bus import EventBus
from code_hero.runs.claims import Claims
from code_hero.runs.eventlog import EventLog, RunEventWriter
from code_hero.runs.events import (
    STREAM_MODES,
    Draft,
    EventType,
    checkpoint_saved,
    namespace_of,
    translate,
)
from code_hero.runs.graphs import GraphRegistry
from code_hero.runs.interrupts import graph_of, pending_of
from code_hero.runs.requests import (
    DEFAULT_RECURSION_LIMIT,
    RESERVED_CONFIG_KEYS,
    UNSET,
    StartRun,
    check_answer,
    check_config,
    check_one_input,
    continuing,
    goes_on,
    input_for,
)
from code_hero.runs.timeline import Timeline, ended_at_cancel
from code_hero.runs.waits import Waits

__all__ = [
    "DEFAULT_RECURSION_LIMIT",
    "RESERVED_CONFIG_KEYS",
    "UNSET",
    "MultitaskStrategy",
    "RunExecutor",
    "StartRun",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
# A waiter for a run just admitted here looks at the registry this soon at the latest
# (no claim pass ending meanwhile: a busy pool, a shutdown).
_FIRST_LOOK_AT_THE_LATEST = 0.25
# Runs a per-run memo of `RunExecutor` (`_fresh`, `_lock_releases`, `_at_lock`) keeps at most: a
# run may end on another replica, and its entry is then forgotten oldest first.
_RUNS_REMEMBERED = 4096


def _remember(memo: dict[str, T], run_id: str, value: T) -> None:
    """Set `memo[run_id]` as its newest entry, forgetting the oldest past the bound."""
    memo.pop(run_id, None)
    memo[run_id] = value
    if len(memo) > _RUNS_REMEMBERED:
        del memo[next(iter(memo))]


# Times one run is released here for a lock of the gateway's store before it ends ERROR
# instead: each release resumes it from its last checkpoint, repeating the step it was
# in (its side effects too), and a lock that every resumption meets again (a store
# whose error is misread) must not repeat them for ever.
MAX_LOCK_RELEASES = 5


class RunExecutor:
    """Claims and executes runs in the background for one process."""

    def __init__(
        self,
        manager: EnhancedCheckpointerManager,
        graphs: GraphRegistry,
        events: EventLog,
        *,
        max_concurrent: int = 8,
        lease_seconds: float = 15.0,
        max_message_length: int = 100_000,
        poll_interval: float | None = None,
        claim_others: bool = True,
        max_recursion_limit: int = 100,
    ) -> None:
        self.manager = manager
        self.graphs = graphs
        self.events = events
        self.bus: EventBus = events.bus
        self.max_message_length = max_message_length
        self.max_recursion_limit = max_recursion_limit
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._final: dict[str, RunRecord] = {}
        self._waiters: dict[str, int] = {}
        # Set (and dropped) when a waited-for run is launched or ends here: a waiter
        # wakes at once instead of at its next look at the registry.
        self._news: dict[str, asyncio.Event] = {}
        self._cancel_requested: set[str] = set()
        self._lost: set[str] = set()
        self._ending: set[str] = set()  # recording their end: their leases are not lost
        self._endings: set[asyncio.Task[None]] = set()  # ends recorded for tasks that never ran
        # Runs admitted here on a thread made for them, until their first launch here:
        # that execution's checkpoint read would find nothing (see `fresh_thread`). Oldest
        # forgotten past a bound (a run claimed elsewhere never launches here): a run
        # forgotten just reads as any other.
        self._fresh: dict[str, bool] = {}
        # Runs released here for a lock of the store, and how often (`MAX_LOCK_RELEASES`);
        # oldest forgotten past a bound (a run may end on another replica).
        self._lock_releases: dict[str, int] = {}
        # Runs released here for a lock of the store, not ended yet: a `startRun(wait)`
        # for one answers at once (`_at_lock_error`) rather than for as long as the lock
        # is held (a LOCK TABLE for a minute, every resumption's end meeting it again).
        self._at_lock: dict[str, bool] = {}
        # The waits with no limit (`startRun(wait)`) begun without an app's own.
        self.waits = Waits()
        self.claims = Claims(
            self,
            lambda: self.manager.registry,
            self.bus,
            graphs.names,
            max_concurrent=max_concurrent,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
            claim_others=claim_others,
        )
        self.owner = self.claims.owner  # the name its leases are held under

    # ---------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> RunExecutor:
        self.claims.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def shutdown(self, grace: float = 10.0) -> None:
        """Drain: claim nothing more, give running runs `grace` seconds to end, then
        stop the rest and release their leases so another executor resumes them."""
        self.claims.stop_claiming()
        running = [t for t in self._tasks.values() if not t.done()]
        if running:
            _, still = await asyncio.wait(running, timeout=grace)
            for task in still:
                task.cancel()  # released, not CANCELLED: see _execute
            if still:
                await asyncio.wait(still, timeout=5)
        await self.claims.close()
        await self.events.close()

    @property
    def registry(self) -> Registry:
        """The registry of the manager's authoritative backend."""
        return self.manager.registry

    def internal_sizes(self) -> dict[str, int]:
        """Entries in each per-run structure (all back to 0 once the runs have ended)."""
        return {
            "executor.started": len(self.claims.started),
            "executor.tasks": len(self._tasks),
            "executor.done": len(self._done),
            "executor.final": len(self._final),
            "executor.waiters": len(self._waiters),
            "executor.news": len(self._news),
            "executor.cancel_requested": len(self._cancel_requested),
            "executor.lost": len(self._lost),
            "executor.leases": self.claims.leases_known,
        }

    @property
    def active_runs(self) -> int:
        """How many runs this process is executing now."""
        return sum(1 for task in self._tasks.values() if not task.done())

    def is_active(self, run_id: str) -> bool:
        """True while this process executes the run."""
        task = self._tasks.get(run_id)
        return task is not None and not task.done()

    def is_ending(self, run_id: str) -> bool:
        """True while the run's end is being recorded here (its row may say so already)."""
        return run_id in self._ending

    def running(self) -> list[str]:
        """The runs this process is executing now."""
        return [run_id for run_id, task in self._tasks.items() if not task.done()]

    def launch(self, record: RunRecord, *, resuming: bool) -> None:
        """Execute a run claimed here, in a task of its own."""
        self._done[record.run_id] = asyncio.Event()
        # Only a first execution (PENDING when claimed) starts on a thread with nothing.
        fresh = self._fresh.pop(record.run_id, False) and not resuming
        task = asyncio.create_task(
            self._execute(record, resuming=resuming, fresh=fresh), name=f"run-{record.run_id}"
        )
        self._tasks[record.run_id] = task
        task.add_done_callback(functools.partial(self._forget, record))
        self._tell_waiters(record.run_id)

    def _tell_waiters(self, run_id: str) -> None:
        news = self._news.pop(run_id, None)
        if news is not None:
            news.set()

    def stop(self, run_id: str, *, lost: bool = False) -> None:
        """Stop the run executing here: cancelled, or (`lost`) left to the executor that
        holds its lease now."""
        task = self._tasks.get(run_id)
        if task is not None:
            (self._lost if lost else self._cancel_requested).add(run_id)
            task.cancel()

    async def finish_cancelled(self, record: RunRecord) -> None:
        """Record CANCELLED for a cancelled run nobody executes: before anyone did, or
        after its executor was lost (its lease lapsed). A step that executor left open
        ends "cancelled" with the run, as a step in flight at a cancel does; it stayed
        open for good (no finish, no error: running, to a timeline)."""
        self._fresh.pop(record.run_id, None)
        steps = ended_at_cancel(record.steps, clock.now())
        recorded = None if steps is None else {"steps": steps}
        try:
            await self._finish(
                record.run_id, record.thread_id, RunStatus.CANCELLED, None, None, None, recorded
            )
        except PrimaryUnreachableError as exc:
            if self.manager.router.is_local(record.thread_id):
                raise
            log.info("the end of run %s waits for the primary: %s", record.run_id, exc)
            await self._hold_for_outage(record.run_id, cancelled=True)

    # ---------------------------------------------------------------- start
    async def start(self, req: StartRun, waits: Waits | None = None) -> RunRecord:
        """Validate, record PENDING and wake the claimers; with `wait`, the final run
        (answered early once `waits`, by default `self.waits`, is stopped)."""
        if self.claims.closing:
            raise ConflictError("the server is shutting down and takes no new runs")
        check_config(req.config, self.max_recursion_limit)
        thread: ThreadRecord | None = None
        named = req.graph  # the graph asked for (a resume's is, unless named, the asker's)
        if req.resume is not UNSET:
            req = await continuing(self.registry, req)
        check_one_input(req)
        if (
            req.graph is None
            and req.thread_id is not None
            and (req.resume is not UNSET or goes_on(req))
        ):
            # A resume with no INTERRUPTED run, or a run going on from the checkpoint: on
            # the graph the thread last ran.
            thread = await self.registry.get_thread(req.thread_id)
            graph = await graph_of(self.registry, self.graphs, req.thread_id, thread)
            req = replace(req, graph=graph)
        graph_name = req.graph or self.graphs.default
        self.graphs.get(graph_name)
        run_input = input_for(
            req, graph_name, self.graphs.input_keys(graph_name), self.max_message_length
        )
        new_thread = req.thread_id is None
        thread_id = req.thread_id or str(uuid.uuid4())
        if req.resume is not UNSET:
            if thread is None and not new_thread:  # not read for its graph above
                thread = await self.registry.get_thread(thread_id)
            if thread is None and await self.manager.get_checkpoint(thread_id) is None:
                raise NotFoundError(f"no thread {thread_id!r}")  # as for any unknown id
            # From a past checkpoint (a fork), what counts is what waits there: the
            # thread may have gone on since (answered, or run again).
            if thread is not None and thread.status is ThreadStatus.BUSY:
                # (another resume got in first, or a run is in flight or queued)
                raise ConflictError(
                    f"thread {thread_id!r} is busy with a run: a resume answers what it "
                    "waits for once that run has ended"
                )
            if thread is None or (
                thread.status is not ThreadStatus.INTERRUPTED and not req.from_checkpoint_id
            ):
                raise ConflictError(f"thread {thread_id!r} is not interrupted: nothing to resume")
            # The questions pending where the resume goes on (with fromCheckpointId, at
            # that checkpoint), read by the graph it runs on: `continuing` chose it.
            at = {"thread_id": thread_id}
            if req.from_checkpoint_id:
                at["checkpoint_id"] = req.from_checkpoint_id
            state = await self.graphs.get(graph_name).aget_state(
                {"configurable": at}, subgraphs=True
            )
            pending = [interrupt_id for interrupt_id, *_ in pending_of(state)]
            if req.from_checkpoint_id and not pending:
                if await self.manager.get_checkpoint(thread_id, req.from_checkpoint_id) is None:
                    raise NotFoundError(
                        f"checkpoint {req.from_checkpoint_id!r} is not in thread {thread_id!r}"
                    )
                raise ConflictError(
                    f"checkpoint {req.from_checkpoint_id!r} of thread {thread_id!r} waits "
                    "for no answer: nothing to resume there"
                )
            if not pending and named is not None:  # (a fork's: refused above)
                raise BadInputError(
                    f"graph {named!r} finds no question pending on thread {thread_id!r}: a "
                    "resume carries on the graph that asked (leave graph out)"
                )
            if not pending:
                raise ConflictError(f"thread {thread_id!r} waits for no answer: nothing to resume")
            check_answer(req.resume, pending)
        if req.from_checkpoint_id:
            found = await self.manager.get_checkpoint(thread_id, req.from_checkpoint_id)
            if found is None:
                raise NotFoundError(
                    f"checkpoint {req.from_checkpoint_id!r} is not in thread {thread_id!r}"
                )
        elif goes_on(req) and await self.manager.get_checkpoint(thread_id) is None:
            raise NotFoundError(
                f"thread {thread_id!r} has no checkpoint to go on from: give message or input"
            )
        config = dict(req.config)
        config.pop(RUN_WEBHOOK_KEY, None)  # a resume carries on a config, not its webhook
        if req.webhook:
            config[RUN_WEBHOOK_KEY] = req.webhook
        if req.from_checkpoint_id:
            config["checkpoint_id"] = req.from_checkpoint_id
        run_id = str(uuid.uuid4())
        now = clock.now()
        first = EventRecord(
            run_id,
            thread_id,
            1,
            EventType.STATUS.value,
            {"status": RunStatus.PENDING.value, "error": None},
            now,
        )
        if new_thread:  # before the admission: a claim pass may launch it before we return
            _remember(self._fresh, run_id, True)
        # With a slot free here, the run is admitted claimed by this executor (unless
        # its thread has an older unfinished run) and launched at once: no claim pass.
        until = self.claims.admitting()
        run = RunRecord(
            run_id=run_id,
            thread_id=thread_id,
            graph=graph_name,
            status=RunStatus.PENDING,
            input=to_jsonable(run_input if req.resume is UNSET else {"resume": req.resume}),
            metadata=dict(req.metadata),
            config=config,
            user_id=req.user_id,
            multitask=req.multitask.value,
            created_at=now,
            lease_owner=None if until is None else self.owner,
            lease_expires_at=until,
        )
        admission = self._admit(
            run,
            first,
            # A resume answers the questions pending now: with a run of the thread
            # unfinished (another resume got in first, racing this one), it would
            # answer them twice or cut that run's answer short. Refused, whatever its
            # multitask: one answer per question (the thread keeps them meanwhile).
            reject_if_busy=req.multitask is MultitaskStrategy.REJECT or req.resume is not UNSET,
            owner=req.owner,
            new_thread=new_thread,
        )
        if until is None:
            record, busy, launched = await admission
        else:
            # To its end even if the caller goes meanwhile: a run admitted leased here
            # is launched, or its lease given back, not left leased to nobody.
            (record, busy, launched), cancelled = await to_its_end(admission)
            if cancelled:
                if record is not None and not launched:
                    self.claims.wake()  # queued, or given back: a claim pass takes it
                raise asyncio.CancelledError
        if record is None:
            raise ConflictError(
                f"thread {thread_id!r} is busy with run {busy!r}; "
                "use multitask ENQUEUE or INTERRUPT"
            )
        if launched:
            await self.bus.stored([first])
        else:  # one round trip: both notifications
            await self.bus.stored([first], control=self.claims.runs_admitted())
        if busy is not None and req.multitask is MultitaskStrategy.INTERRUPT:
            if await self._interrupt_others(record):
                # A newer INTERRUPT start of the thread supersedes this one (concurrent
                # starts: each cancelled every other one, and none ran).
                record = await self.cancel(run_id)
        if req.wait:
            return await self.wait(run_id, fresh=True, waits=waits)
        return record

    async def _interrupt_others(self, record: RunRecord) -> bool:
        """`multitask: INTERRUPT` after `record`'s admission: cancel the thread's runs
        queued before it (its queue's order: created_at, then run id), unless a newer
        INTERRUPT start is there: then nothing, and True (this one is superseded). Of
        starts racing on one thread, the newest runs and every other one is cancelled."""
        others = [
            r
            for r in await self.registry.unfinished_runs(record.thread_id)
            if r.run_id != record.run_id
        ]
        if any(
            _queued_before(record, r) and r.multitask == MultitaskStrategy.INTERRUPT.value
            for r in others
        ):
            return True
        for older in others:
            if _queued_before(older, record):
                await self.cancel(older.run_id)
        return False

    async def _admit(
        self,
        run: RunRecord,
        first: EventRecord,
        *,
        reject_if_busy: bool,
        owner: str | None,
        new_thread: bool,
    ) -> tuple[RunRecord | None, str | None, bool]:
        """Record the run PENDING (`Registry.admit_run`) and publish its first event:
        the run (None: refused, its thread busy), the busy run's id, and whether it was
        launched here. A run admitted leased here is launched at once, or, the slot
        gone or claiming stopped meanwhile, released to a claim."""
        leased = run.lease_owner is not None
        try:
            record, busy = await self.registry.admit_run(
                run,
                reject_if_busy=reject_if_busy,
                events=[first],
                owner=owner,
                new_thread=new_thread,
            )
        except BaseException:
            if leased:
                self.claims.not_admitted()
            self._fresh.pop(run.run_id, None)
            raise
        if record is None:
            if leased:
                self.claims.not_admitted()
            self._fresh.pop(run.run_id, None)
            return None, busy, False
        self.manager.router.note_touched(run.thread_id)
        self.bus.publish(first)  # before its launch: PENDING comes before RUNNING
        if not leased:
            launched = False
        elif record.lease_owner != self.owner:  # queued behind an older run of its thread
            self.claims.not_admitted()
            launched = False
        elif not (launched := self.claims.admitted(record)):
            try:
                await self.registry.release_runs(self.owner, [run.run_id])
            except Exception as exc:  # its lease lapses instead
                log.warning("releasing run %s admitted here failed: %s", run.run_id, exc)
        if not launched and not self.claims.claim_others:
            self.claims.started.add(run.run_id)
        return record, busy, launched

    # ---------------------------------------------------------------- waiting and cancel
    async def wait(
        self,
        run_id: str,
        limit: float | None = None,
        *,
        fresh: bool = False,
        waits: Waits | None = None,
    ) -> RunRecord:
        """The run once it has ended, wherever it runs (or as it is after `limit` s);
        `fresh`: just admitted here, so no use asking the registry before a first pause.
        With no limit, cut short once `waits` (by default `self.waits`) is stopped
        (UNAVAILABLE naming the run). A run an outage holds answers UNAVAILABLE naming
        it at once; with a limit (a cancel's wait), saying its cancel is recorded."""
        if limit is not None:
            return await self._wait(run_id, limit, fresh)
        waits = self.waits if waits is None else waits
        if (retry_after := waits.answer_now()) is not None:
            raise self._stopping_error(run_id, retry_after)
        # A timeout the stop brings forward: it cancels whatever the wait awaits (a
        # registry read included, as a caller's disconnect would).
        stop = asyncio.timeout(None)
        try:
            async with stop:
                with waits.held(stop):
                    return await self._wait(run_id, None, fresh)
        except TimeoutError:
            if not stop.expired() or waits.retry_after is None:
                raise
            raise self._stopping_error(run_id, waits.retry_after) from None

    async def _wait(self, run_id: str, limit: float | None, fresh: bool) -> RunRecord:
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        self._waiters[run_id] = self._waiters.get(run_id, 0) + 1
        try:
            pause = 0.01
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that
            # comes with the news, and a waiter stopped then waited on for the run's end.
            if fresh and run_id not in self._done:  # mostly claimed here by the next pass
                # Woken when launched here, or when the next claim pass here ends without
                # it (claimed elsewhere, no slot): only then is the registry worth a look.
                # Not after a fixed pause: a pass on a busy loop outlasts one, and a look
                # for a run about to start here was a statement a run (issue 15).
                news = self._news.setdefault(run_id, asyncio.Event())
                self.claims.after_next_pass(functools.partial(self._tell_waiters, run_id))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_FIRST_LOOK_AT_THE_LATEST):
                        await news.wait()
            while True:
                done = self._done.get(run_id)
                if done is not None:
                    left = None if deadline is None else max(deadline - loop.time(), 0)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left):
                            await done.wait()
                    final = self._final.get(run_id)
                    if final is not None:
                        return final
                try:
                    record = await self.registry.get_run(run_id)
                except PrimaryUnreachableError:
                    if deadline is None:  # startRun(wait): the run is recorded; name it
                        raise self._held_up_error(run_id) from None
                    raise
                if record is None:
                    raise NotFoundError(f"no run {run_id!r}")
                if record.status.finished or (deadline is not None and loop.time() >= deadline):
                    return record
                if run_id not in self._done and self._held_up(record):
                    # Nothing here can end it before the primary is back: a limited wait
                    # (a cancel's, its flag recorded) would only wait out its limit.
                    if deadline is None:
                        raise self._held_up_error(run_id)
                    raise self._cancel_held_up_error(run_id)
                if deadline is None and run_id not in self._done and run_id in self._at_lock:
                    raise self._at_lock_error(run_id)
                if run_id not in self._done:  # executing elsewhere (or not claimed yet)
                    news = self._news.setdefault(run_id, asyncio.Event())
                    with contextlib.suppress(TimeoutError):  # launched or ended here
                        async with asyncio.timeout(pause):
                            await news.wait()
                    pause = min(pause * 2, 0.25)
        finally:
            self._waiters[run_id] -= 1
            if not self._waiters[run_id]:
                del self._waiters[run_id]
                self._final.pop(run_id, None)
                self._news.pop(run_id, None)

    def _held_up(self, record: RunRecord) -> bool:
        """Whether the unfinished run, not executing here, waits for the unreachable
        primary: its rows are there, so nothing here can take it up before it is back."""
        router = self.manager.router
        return not router.serving and not router.is_local(record.thread_id)

    def _held_up_error(self, run_id: str) -> RunHeldUpError:
        router = self.manager.router
        return RunHeldUpError(
            f"run {run_id} is recorded but cannot go on while the database is "
            f"{router.outage_state}: "
            f"it goes on once the database is back; ask for that run then (retry in "
            f"{router.retry_after} s) rather than starting another",
            router.retry_after,
            run_id,
        )

    def _cancel_held_up_error(self, run_id: str) -> RunHeldUpError:
        router = self.manager.router
        return RunHeldUpError(
            f"run {run_id}'s cancel is recorded, but the run cannot end while the "
            f"database is {router.outage_state}: it ends CANCELLED once the database is "
            f"back (retry in {router.retry_after} s)",
            router.retry_after,
            run_id,
        )

    @staticmethod
    def _stopping_error(run_id: str, retry_after: int) -> RunHeldUpError:
        return RunHeldUpError(
            f"run {run_id} is recorded and goes on, but this server is stopping: the run "
            "ends here or another server resumes it from its last checkpoint; follow that "
            f"run (run, runEvents) rather than starting another (retry in {retry_after} s)",
            retry_after,
            run_id,
        )

    @staticmethod
    def _at_lock_error(run_id: str) -> RunHeldUpError:
        return RunHeldUpError(
            f"run {run_id} is recorded but stopped at a database lock another session "
            "holds; it resumes from its last checkpoint once the lock is free: follow that "
            f"run (run, runEvents) rather than starting another (retry in "
            f"{CONTENTION_RETRY_AFTER} s)",
            CONTENTION_RETRY_AFTER,
            run_id,
        )

    async def cancel(self, run_id: str) -> RunRecord:
        """Stop a run promptly, wherever it runs, and record CANCELLED (a finished run
        is returned as it is)."""
        return await self.claims.cancel(run_id)

    async def stop_thread(self, thread_id: str) -> None:
        """Cancel every unfinished run of the thread, wherever it runs, and wait until
        none executes (a deletion follows: nothing may write after it)."""
        await self.claims.stop_thread(thread_id)

    async def recover(self) -> int:
        """Claim what can be claimed now (runs whose lease lapsed included)."""
        before = len(self._tasks)
        await self.claims.claim_once()
        return len(self._tasks) - before

    # ---------------------------------------------------------------- execution
    async def _execute(
        self, record: RunRecord, *, resuming: bool = False, fresh: bool = False
    ) -> None:
        run_id, thread_id = record.run_id, record.thread_id
        status, output, error = RunStatus.ERROR, None, None
        thread_status: ThreadStatus | None = None  # None: the one its end status gives
        writer: RunEventWriter | None = None
        timeline = Timeline(record)
        try:
            # RUNNING, and where its events' numbering goes on, in one statement.
            running, last = await self.registry.start_run(run_id, record.started_at or clock.now())
            writer = await self.events.writer(
                run_id, thread_id, last=last, started=running, leased_by=self.owner
            )
            self._go_on(run_id)
            writer.emit(EventType.STATUS, {"status": RunStatus.RUNNING.value, "error": None})
            # A thread made for this run, executing for the first time: no checkpoint
            # read at the start (issue 15; nothing may write to it while the run is in
            # flight).
            async with fresh_thread(thread_id if fresh else None):
                status, output, error = await self._stream(
                    running or record, writer, resuming, timeline
                )
        except asyncio.CancelledError:
            closing = self.claims.closing
            if run_id in self._lost or (closing and run_id not in self._cancel_requested):
                # Draining, or another executor holds the run now: leave it RUNNING and
                # resumable from its last checkpoint, lease released.
                if writer is not None:
                    await self._close_writer(run_id, writer)
                if run_id not in self._lost:
                    with contextlib.suppress(Exception):
                        await self.registry.release_runs(self.owner, [run_id])
                        await self.bus.send_control("runs")
                else:  # its row may be gone with its thread rather than taken over
                    await self._purge_if_deleted(run_id, thread_id)
                self._release(run_id)
                return
            status = RunStatus.CANCELLED
        except CodeHeroError as exc:  # expected (a database outage, bad input): no traceback
            if isinstance(exc, PrimaryUnreachableError) and not self.manager.router.is_local(
                thread_id
            ):
                await self._release_for_outage(run_id, writer, exc)
                return
            log.warning("run %s failed: %s", run_id, exc)
            status, error = RunStatus.ERROR, _error_of(exc)
        except UnknownInterruptError as exc:
            # A resume whose answer no longer matches what the thread waits for (another
            # resume answered first, or the question changed): LangGraph refused it
            # before writing anything, so the questions still wait (strict resume).
            log.warning("run %s: its answer was refused: %s", run_id, exc)
            status, error = RunStatus.ERROR, _refused_answer(exc)
            if exc.pending_ids:
                thread_status = ThreadStatus.INTERRUPTED
        except Exception as exc:
            # A lock of the gateway's store, not one the graph met in a database of its
            # own (`contention.from_store`): the same error, rerun, would come again.
            # A statement the database cancelled (its statement_timeout) is slow again when
            # resumed: the run ends ERROR now rather than repeating its step.
            if contention(exc) is not None and from_store(exc) and not cancelled_by_database(exc):
                if self._released_for_lock(run_id):
                    await self._release_after_lock_wait(run_id, writer, exc)
                    return
                log.error(
                    "run %s met a lock of the database %d times: ends ERROR",
                    run_id,
                    MAX_LOCK_RELEASES + 1,
                )
                status, error = (
                    RunStatus.ERROR,
                    (
                        f"the run stopped at a lock of the database {MAX_LOCK_RELEASES + 1} "
                        "times (another process holding the file or rows it writes) and was "
                        f"not resumed again: {type(exc).__name__}: {exc}"
                    ),
                )
            elif cancelled_by_database(exc) and from_store(exc):
                # The database's statement_timeout: its condition, not our bug.
                log.warning("run %s failed: the database cancelled its write: %s", run_id, exc)
                status, error = RunStatus.ERROR, f"{type(exc).__name__}: {exc}"
            elif await self._refused_input(record, exc):
                # The caller's input, not a bug: the run says why; no traceback.
                text = " ".join(f"{type(exc).__name__}: {exc}".split())
                log.warning("run %s failed: the graph refused its input: %s", run_id, text)
                status, error = RunStatus.ERROR, f"{type(exc).__name__}: {exc}"
            else:
                log.exception("run %s failed", run_id)
                status, error = RunStatus.ERROR, f"{type(exc).__name__}: {exc}"
        self._lock_releases.pop(run_id, None)
        self._at_lock.pop(run_id, None)
        router = self.manager.router
        if status is not RunStatus.ERROR and run_id in router.journal.refused_runs:
            # The copy-back refused a checkpoint of it that nothing newer supersedes: the
            # thread lacks the state it ends with. Decided before the end is told, so its
            # end event, its waiters and its row agree.
            refused = await _to_the_end(router.refused_end(run_id, thread_id, status))
            if refused is not None:
                log.warning("run %s ends ERROR: %s", run_id, refused)
                status, error = RunStatus.ERROR, refused
        waiting = held = False
        try:
            # The end is decided: a cancel arriving now (a second one: from the lease
            # renewal, another replica's message) must not cut the recording short,
            # or the run would stay RUNNING with its events half stored.
            timeline.end(status, error)
            self._ending.add(run_id)
            try:
                final, waiting = await _to_the_end(
                    self._finish(
                        run_id,
                        thread_id,
                        status,
                        output,
                        error,
                        writer,
                        timeline.fields(),
                        leased=True,
                        thread_status=thread_status,
                    )
                )
            except PrimaryUnreachableError as exc:
                if self.manager.router.is_local(thread_id):
                    raise
                # Its end needs the primary (a run stopped before it had an event
                # writer: its events' numbering is there): kept for the primary.
                log.info("the end of run %s waits for the primary: %s", run_id, exc)
                await self._hold_for_outage(run_id, cancelled=status is RunStatus.CANCELLED)
                held = True
            except Exception as exc:
                if contention(exc) is not None:  # a lock another holds: the next claimer's
                    log.warning("the end of run %s waits for a database lock: %s", run_id, exc)
                    _remember(self._at_lock, run_id, True)
                    if run_id not in self._lost:  # resumed at once, not once the lease lapses
                        cancelled = status is RunStatus.CANCELLED
                        await self._release_past_lock(run_id, cancelled=cancelled)
                        held = True
                elif not is_refused_value(exc):
                    raise
                else:
                    # The database refused the end itself (what the run produced, not an
                    # outage): resumed by a next claimer, the run would fail so again, for
                    # ever. It ends ERROR instead, with no output, saying what was refused.
                    final, waiting, held = await self._end_refused(run_id, thread_id, status, exc)
            else:
                if final is None:  # taken over, or its row is gone with its thread
                    await self._purge_if_deleted(run_id, thread_id)
        finally:
            self._release(run_id)
        self.claims.slot_freed()
        if held and not self.claims.claim_others:  # claimed (or its cancel recorded) here
            self.claims.started.add(run_id)
        if waiting:  # the thread's next run is claimable now, wherever it may run
            await self.bus.send_control("runs")

    async def _end_refused(
        self,
        run_id: str,
        thread_id: str,
        status: RunStatus,
        refusal: Exception,
    ) -> tuple[RunRecord | None, bool, bool]:
        """Record ERROR for a run whose `status` end the database refused: the final
        run, whether the thread has runs waiting, and whether the end is held for an
        outage. Only the status and this error are written: the refused value may be in
        the output, the last events or the timeline (its steps' errors), and sent again
        it would be refused again. Refused again, the run is left to its lease (logged)."""
        log.error("the %s end of run %s was refused", status.value, run_id, exc_info=refusal)
        error = (
            f"the run ended {status.value} but the database refused to store that end "
            f"(its output or last events), so they are dropped: "
            f"{type(refusal).__name__}: {refusal}"
        )[:2000]
        try:
            final, waiting = await _to_the_end(
                self._finish(
                    run_id,
                    thread_id,
                    RunStatus.ERROR,
                    None,
                    error,
                    None,  # a fresh writer: the refused events were dropped by the first
                    None,  # no steps or token counts: the run keeps those last stored
                    leased=True,
                )
            )
        except PrimaryUnreachableError as exc:
            if self.manager.router.is_local(thread_id):
                log.error("the ERROR end of run %s failed too: %s", run_id, exc)
                return None, False, False
            log.info("the end of run %s waits for the primary: %s", run_id, exc)
            await self._hold_for_outage(run_id, cancelled=False)
            return None, False, True
        except Exception:
            log.exception("the ERROR end of run %s was refused too: left to its lease", run_id)
            return None, False, False
        if final is None:
            await self._purge_if_deleted(run_id, thread_id)
        return final, waiting, False

    async def _release_for_outage(
        self, run_id: str, writer: RunEventWriter | None, exc: PrimaryUnreachableError
    ) -> None:
        """The run needs its rows or thread from the primary, which an outage took after
        it was claimed: released, not failed (the release is journalled, as the changes
        of a run in flight are), it starts or resumes from its last checkpoint as soon
        as the primary is back, not once its lease has lapsed."""
        log.info("run %s waits for the primary: %s", run_id, exc)
        lost, cancelled = run_id in self._lost, run_id in self._cancel_requested
        if writer is not None:
            await self._close_writer(run_id, writer)
        if not lost:  # else another executor holds it now: its lease is not ours to free
            # A stop that an await turned into this error (3.11's wait_for) is kept.
            await self._hold_for_outage(run_id, cancelled=cancelled)
        self._release(run_id)
        self.claims.slot_freed()
        if not (lost or self.claims.claim_others):  # claimed (or its cancel recorded) here
            self.claims.started.add(run_id)

    def _released_for_lock(self, run_id: str) -> bool:
        """Count a release of the run for a lock of the store; False past the cap."""
        count = self._lock_releases.pop(run_id, 0) + 1
        if count > MAX_LOCK_RELEASES:
            return False
        _remember(self._lock_releases, run_id, count)
        return True

    async def _release_after_lock_wait(
        self, run_id: str, writer: RunEventWriter | None, exc: Exception
    ) -> None:
        """A write of the run waited out a lock another holds (another process writing
        the SQLite file, a PostgreSQL deadlock): no fault of the run, and recorded ERROR
        it would end for good. Released instead, it resumes from its last checkpoint.
        The release meets the same lock: tried again each second, for at most a lease
        (past that the lease has lapsed and the run is claimable anyway)."""
        log.warning("run %s stopped at a database lock, resumes once it is free: %s", run_id, exc)
        _remember(self._at_lock, run_id, True)
        lost, cancelled = run_id in self._lost, run_id in self._cancel_requested
        if writer is not None:
            await self._close_writer(run_id, writer)
        if not lost:
            await self._release_past_lock(run_id, cancelled=cancelled)
        self._release(run_id)
        self.claims.slot_freed()
        if not (lost or self.claims.claim_others):
            self.claims.started.add(run_id)

    async def _release_past_lock(self, run_id: str, *, cancelled: bool) -> None:
        """Give the run's lease up (its cancel flag first, with `cancelled`), tried
        again each second while a lock another holds refuses it, for at most a lease
        (past that the lease has lapsed and the run is claimable anyway)."""

        async def release() -> None:
            deadline = asyncio.get_running_loop().time() + self.claims.lease.total_seconds()
            while True:
                try:
                    if cancelled:
                        await self.registry.request_cancel(run_id)
                    await self.registry.release_runs(self.owner, [run_id])
                    return
                except Exception as again:
                    if contention(again) is None:
                        return  # as _hold_for_outage: the lease lapses instead
                    if asyncio.get_running_loop().time() > deadline:
                        return
                await asyncio.sleep(1)

        await _to_the_end(release())

    async def _hold_for_outage(self, run_id: str, *, cancelled: bool) -> None:
        """Give the run's lease up during an outage (journalled: `ReleaseRun`); with
        `cancelled`, its cancel flag first, so once the primary is back the run is ended
        CANCELLED (claim_cancelled), never started again."""

        async def hold() -> None:
            with contextlib.suppress(Exception):
                if cancelled:
                    await self.registry.request_cancel(run_id)
                await self.registry.release_runs(self.owner, [run_id])

        # Not cut short by a stop (a lease renewal that reads the cancel flag just set):
        # the release must be journalled, or the run waits for its lease to lapse.
        await _to_the_end(hold())

    async def _stream(
        self, record: RunRecord, writer: RunEventWriter, resuming: bool, timeline: Timeline
    ) -> tuple[RunStatus, Any, str | None]:
        graph = self.graphs.get(record.graph)
        configurable = {**record.config, "thread_id": record.thread_id, "run_id": record.run_id}
        configurable.pop(RUN_WEBHOOK_KEY, None)  # the gateway's, not the graph's
        if record.user_id:
            configurable["user_id"] = record.user_id
        if resuming and not await self._checkpointed(record):
            # Its executor died before the first checkpoint: the input (and the fork
            # point) never reached the saver, so the run starts afresh.
            resuming = False
        if resuming:
            configurable.pop("checkpoint_id", None)
        elif "checkpoint_id" in configurable:
            # A fork whose checkpoint went after it was asked for (pruned): LangGraph
            # would run it from an empty state instead.
            start = str(configurable["checkpoint_id"])
            if await self.manager.get_checkpoint(record.thread_id, start) is None:
                raise NotFoundError(
                    f"checkpoint {start!r} is no longer in thread {record.thread_id!r} "
                    "(pruned after the run was asked for)"
                )
        config: RunnableConfig = {
            "configurable": configurable,
            # The run id in every checkpoint's metadata tells a takeover what it wrote.
            "metadata": {
                **dict(record.metadata),
                "run_id": record.run_id,
                GRAPH_ID_KEY: record.graph,
            },
            "recursion_limit": int(
                record.config.get(
                    "recursion_limit", min(DEFAULT_RECURSION_LIMIT, self.max_recursion_limit)
                )
            ),
        }
        run_input: Any
        if resuming:
            run_input = None
        elif isinstance(record.input, Mapping) and set(record.input) == {"resume"}:
            run_input = Command(resume=record.input["resume"])
            # Checked by LangGraph against the interrupts pending when the run starts,
            # not only when it was asked for: one queued behind another resume of the
            # thread finds its questions answered, or new ones asked (UnknownInterruptError).
            configurable[CONFIG_KEY_STRICT_RESUME] = True
        else:
            run_input = _with_messages(record.input)
        interrupted = False
        values: Any = None
        stream = cast(  # an async generator: closed at once when _go_on raises in its body
            AsyncGenerator[Any, None],
            graph.astream(
                run_input,
                config,
                stream_mode=STREAM_MODES,  # type: ignore[arg-type]
                subgraphs=True,
                durability="sync",
            ),
        )
        # Each checkpoint is announced once its save returned and the stream reached it,
        # whichever comes last: one whose save a cancel dropped (LangGraph streams a
        # checkpoint before its save ends) is never announced, the cancel waits for no
        # save, and a subgraph's checkpoint still follows its step's update (its save can
        # return while that update waits in the stream).
        saves = _SavedCheckpoints(record.thread_id, writer)
        try:
            with telling_saves(saves.tell):
                async with contextlib.aclosing(stream):
                    async for ns, mode, data in stream:
                        self._go_on(record.run_id)
                        if mode == "values":
                            if not ns:
                                values = data
                            continue
                        if timeline.observe(ns, mode, data):  # stored with the next batch
                            writer.update_run(**timeline.fields())
                        if mode == "tasks":
                            continue
                        if mode == "checkpoints":
                            saves.streamed(data)
                            continue
                        if mode == "updates" and "__interrupt__" in data:
                            interrupted = True
                        for type_, payload in translate(ns, mode, data):
                            writer.emit(type_, payload)
        finally:
            saves.open = False  # a save ending after the run's stream is not announced
        self._go_on(record.run_id)
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

    def _go_on(self, run_id: str) -> None:
        """Raise CancelledError if the run was stopped and an await returned anyway: on
        Python 3.11 asyncio.wait_for (psycopg_pool's getconn waits with it) returns a
        result that arrived with the cancel and drops the cancel."""
        if run_id in self._cancel_requested or run_id in self._lost:
            raise asyncio.CancelledError

    async def _refused_input(self, record: RunRecord, exc: Exception) -> bool:
        """Whether the run failed as its graph's state took its input (a reducer or the
        input schema refusing a value: `{"messages": 5}`), before any node ran.

        Raised outside every task but `__start__` (LangGraph notes the task a node's
        error comes from), not by our stores, with the run's input checkpoint still
        its latest: step 0, which applies the input, never ended.
        """
        if from_store(exc):
            return False
        for note in getattr(exc, "__notes__", ()):
            if str(note).startswith("During task with name '") and "'__start__'" not in note:
                return False
        try:
            latest = await self.manager.get_checkpoint(record.thread_id)
        except Exception:  # unknown, then: told as unexpected, with its traceback
            return False
        return latest is not None and latest.run_id == record.run_id and latest.source == "INPUT"

    async def _checkpointed(self, record: RunRecord) -> bool:
        """True when the run wrote a checkpoint: runs of a thread take turns, so its
        latest is the run's own then."""
        latest = await self.manager.get_checkpoint(record.thread_id)
        return latest is not None and latest.run_id == record.run_id

    async def _finish(
        self,
        run_id: str,
        thread_id: str,
        status: RunStatus,
        output: Any,
        error: str | None,
        writer: RunEventWriter | None = None,
        recorded: Mapping[str, Any] | None = None,
        *,
        leased: bool = False,
        thread_status: ThreadStatus | None = None,
    ) -> tuple[RunRecord | None, bool]:
        """Record the end (with the `recorded` timeline and usage fields): the final run
        (None when it is gone, or, `leased` (claimed here), when this executor holds
        its lease no longer), and whether the thread has runs waiting for it."""
        writer = writer or await self.events.writer(run_id, thread_id)
        # A process that stalled past the lease may find the run taken over: its end,
        # last event included, is the new holder's (or the next claimer's) to record.
        # In an outage too, where a lease that lapsed before it began is not renewed (it
        # may have been taken over then): the run is held for the outage.
        # So too a run a store of its events found another's (its writer fenced), even
        # when claimed back here since (a renewal, to the claims): its events from then
        # on are dropped, and recorded, its end would leave them out of its log; left
        # to its lease, its next claimer resumes it from its last checkpoint.
        if leased and (writer.lost or not await self.claims.still_held(run_id)):
            return await self._taken_over(run_id, writer)
        # Taken over after that look, the end is refused and its events go with it.
        try:
            final, waiting = await self.events.finish(  # a queued run keeps the thread BUSY
                writer,
                {"status": status.value, "error": error},
                thread_status or THREAD_STATUS_AFTER[status],
                status=status,
                output=output,
                error=error,
                finished_at=clock.now(),
                lease_owner=None,
                lease_expires_at=None,
                if_leased_by=self.owner if leased else None,
                **(recorded or {}),
            )
        except BaseException:
            await self._not_ended(run_id, writer, leased=leased)
            raise
        if final is None and leased:  # lost between the look above and the end
            log.warning("run %s was taken over as it ended here: its end is dropped", run_id)
            await self._pass_cancel_on(run_id)
        if final is not None and run_id in self._waiters:
            self._final[run_id] = final
        self._tell_waiters(run_id)  # one that ended unclaimed (cancelled) has no task
        return final, waiting

    async def _not_ended(self, run_id: str, writer: RunEventWriter, *, leased: bool) -> None:
        """After an end that failed: the run is unfinished still, and whoever claims it
        next (here or elsewhere, once its lease lapses or, in an outage, once it is
        released) resumes it and numbers its events after the last one stored. So the
        events published here and not stored are stored now, as a running run's are
        (the writer's retries), or that claimer would reuse their seqs. Not if the run
        is another executor's now: stored, they could collide with its holder's seqs
        and fence it (`_taken_over`); they are dropped with the end then. A retry of
        the end is the next claimer's: this one may have failed for good (the database
        gone, a process stalled)."""
        if leased and run_id not in self._lost and not await self.claims.still_held(run_id):
            await _fenced(writer)
        else:
            await self._close_writer(run_id, writer)  # fenced too when lost at a renewal

    async def _taken_over(
        self, run_id: str, writer: RunEventWriter
    ) -> tuple[RunRecord | None, bool]:
        """Leave the run to the executor that holds it now: no end, no last event; the
        waiters here follow the run as recorded, wherever it goes on."""
        log.warning("lost the lease of run %s before its end: another executor has it", run_id)
        await _fenced(writer)
        await self._give_up(run_id)
        await self._pass_cancel_on(run_id)
        self._tell_waiters(run_id)
        return None, False

    async def _give_up(self, run_id: str) -> None:
        """Tell the registry the run is executed here no longer, whatever fenced its
        writer (a flush that found it another's, its events' numbers colliding, a
        renewal): kept, it would stay as executing here for good (and an outage would
        go on with it from the copy here). A lease this executor holds again (the run
        claimed back here while this task ran on) goes back, for a claim to run it."""
        try:
            await self.registry.release_runs(self.owner, [run_id])
        except Exception as exc:  # its lease lapses instead
            log.warning("giving up run %s after it was taken over failed: %s", run_id, exc)

    async def _close_writer(self, run_id: str, writer: RunEventWriter) -> None:
        """Store what the run's writer holds, or, the run lost to another executor
        (its lease renewal found it not held), drop it with the writer fenced."""
        if run_id in self._lost:
            await _fenced(writer)
        else:
            await writer.close()

    async def _pass_cancel_on(self, run_id: str) -> None:
        """A cancel asked here of a run taken over meanwhile is flagged for its holder
        (a stop here flags nothing: the run was executing here)."""
        if run_id not in self._cancel_requested:
            return
        try:
            await self.registry.request_cancel(run_id)
            await self.bus.send_control(f"cancel {run_id}")
        except Exception as exc:
            log.warning("passing the cancel of run %s on failed: %s", run_id, exc)

    async def _purge_if_deleted(self, run_id: str, thread_id: str) -> None:
        """A run that outlived its thread's deletion (its end was not awaited) may have
        written checkpoints after the purge: they go too. Its rows are gone already: a
        run still recorded was taken over (its end refused here), its thread is there
        and not ours to decide on. A thread made anew under the id keeps the checkpoints
        (they are its own now): the primary looks for its row in the deletion's own step."""
        try:
            # In an outage the fallback dropped its copy with the end: the purge decides.
            with contextlib.suppress(PrimaryUnreachableError):
                if await self.registry.get_run(run_id) is not None:
                    return
            if not await self.manager.purge_orphan(thread_id):
                return  # the id was taken again
            log.info("run %s ended after its thread %s was deleted", run_id, thread_id)
        except Exception as exc:
            log.warning("purging the checkpoints of deleted thread %s failed: %s", thread_id, exc)

    def _forget(self, record: RunRecord, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never enters _execute's handlers.
        run_id = record.run_id
        if self._tasks.get(run_id) is not task:
            return
        cancelled = run_id in self._cancel_requested
        self._release(run_id)
        if cancelled:  # record the end _execute would have: the cancel must not be lost
            ending = asyncio.get_running_loop().create_task(self.finish_cancelled(record))
            self._endings.add(ending)
            ending.add_done_callback(self._endings.discard)

    def _release(self, run_id: str) -> None:
        self._tasks.pop(run_id, None)
        self.claims.forget(run_id)
        self._cancel_requested.discard(run_id)
        self._lost.discard(run_id)
        self._ending.discard(run_id)
        done = self._done.pop(run_id, None)
        if done is not None:
            done.set()


class _SavedCheckpoints:
    """Announces a run's checkpoints (`CheckpointSaved`) once each is both saved (its
    save returned: `tell`) and reached in the stream (`streamed`), in the stream's order
    where the save came first."""

    def __init__(self, thread_id: str, writer: RunEventWriter) -> None:
        self.thread_id = thread_id
        self.writer = writer
        self.open = True
        self._saved: dict[tuple[str, str], Draft] = {}  # saved, not streamed yet: the event
        self._streamed: set[tuple[str, str]] = set()  # streamed, not saved yet

    def tell(self, config: RunnableConfig, metadata: Mapping[str, Any]) -> None:
        # Only the run's own thread: a node may run another graph on the same saver.
        conf = config.get("configurable") or {}
        if not self.open or str(conf.get("thread_id")) != self.thread_id:
            return
        key = _checkpoint_key(config)
        if key in self._streamed:
            self._streamed.discard(key)
            self.writer.emit(*checkpoint_saved(config, metadata))
        else:
            self._saved[key] = checkpoint_saved(config, metadata)

    def streamed(self, data: Mapping[str, Any]) -> None:
        key = _checkpoint_key(data.get("config") or {})
        event = self._saved.pop(key, None)
        if event is not None:
            self.writer.emit(*event)
        else:
            self._streamed.add(key)


def _checkpoint_key(config: Mapping[str, Any]) -> tuple[str, str]:
    """A checkpoint's namespace and id, as its save's config and its stream part name it."""
    conf = config.get("configurable") or {}
    return str(conf.get("checkpoint_ns", "")), str(conf.get("checkpoint_id", ""))


async def _fenced(writer: RunEventWriter) -> None:
    """Close the writer of a run another executor holds now, dropping what it has not
    stored: stored now, its seqs could come before the new holder's own (fencing that
    writer instead, or its end's events skipped as stored already), or after its end;
    in an outage they are journalled and copied at recovery past the holder's."""
    writer.closed, writer.pending, writer.fields = True, [], {}
    await writer.close()


async def _to_the_end(step: Awaitable[T]) -> T:
    """Await `step` to its end whatever cancels land meanwhile: its result, or its error."""
    task = asyncio.ensure_future(step)
    while not task.done():
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(task)
    return task.result()


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


def _queued_before(a: RunRecord, b: RunRecord) -> bool:
    """Whether run `a` comes before run `b` in their thread's queue (OLDEST_UNFINISHED_RUN's
    order: created_at, then run id)."""
    epoch = datetime.min.replace(tzinfo=UTC)
    return (a.created_at or epoch, a.run_id) < (b.created_at or epoch, b.run_id)


def _refused_answer(exc: UnknownInterruptError) -> str:
    """A run's error for a resume answer LangGraph refused (strict resume)."""
    waiting = (
        f"the thread still waits for: {', '.join(exc.pending_ids)}"
        if exc.pending_ids
        else "the thread waits for no answer now"
    )
    if exc.reason == "not_pending":
        said = f"it answers interrupts no longer pending: {', '.join(exc.interrupt_ids)}"
    elif exc.reason == "ambiguous":
        said = "it is one answer for several questions: send a map of interrupt id to answer"
    else:
        said = "it is an empty map of interrupt id to answer"
    return f"the resume was refused, nothing was run: {said}; {waiting}"


def _error_of(exc: CodeHeroError) -> str:
    """A run's error for an expected failure; a full outage journal says what it means
    for the run (it stays ERROR after the outage: nothing resumes it)."""
    if isinstance(exc, JournalFullError):
        return (
            f"the run stopped: what it wrote next could not be kept because {exc}; the "
            "steps it stored before are kept (copied to the database with the rest): "
            "start it again once the database is back"
        )
    return f"{type(exc).__name__}: {exc}"
