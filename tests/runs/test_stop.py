"""Stops that an await drops: the lease renewal, the webhook loop, a run's waiter and the
bus's start-up still end.

On Python 3.11 `asyncio.wait_for` (ours, or psycopg_pool's getconn waiting for
a connection) returns a result that arrives together with a cancel and drops
the cancel. Each test makes that happen: the awaited event is set and the stop
comes in the same turn of the loop; then it sees whether the stopped task ended
or carried on (a second call), whichever comes first: no clock involved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from code_hero.config import create_memory_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.persistence.webhooks import Claim
from code_hero.runs.bus import InProcessBus
from code_hero.runs.claims import Claims
from code_hero.runs.pgbus import PostgresBus
from code_hero.runs.webhooks import WebhookDispatcher


class Stage:
    """A call that parks in wait_for until the test lets it go, then notes any call after."""

    def __init__(self) -> None:
        self.parked, self.go, self.carried_on = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def enter(self) -> bool:
        """True on the first call, once let go; False on a call after the stop."""
        if self.parked.is_set():
            self.carried_on.set()
            return False
        self.parked.set()
        await asyncio.wait_for(self.go.wait(), 60)  # as getconn waits for a connection
        return True

    async def stop_as_it_returns(self, stop: Awaitable[Any]) -> bool:
        """Let the parked call go and stop its task in the same turn; True when `stop`
        ended before the task carried on."""
        await self.parked.wait()
        self.go.set()
        stopping = asyncio.ensure_future(stop)
        lost = asyncio.ensure_future(self.carried_on.wait())
        await asyncio.wait([stopping, lost], return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        return stopping.done() and not self.carried_on.is_set()


class Holding:
    """An executor with one run in flight (what the lease renewal asks of it)."""

    active_runs = 1

    def is_active(self, run_id: str) -> bool:
        return True

    def is_ending(self, run_id: str) -> bool:
        return False

    def running(self) -> list[str]:
        return ["r"]

    def launch(self, record: RunRecord, *, resuming: bool) -> None: ...

    def stop(self, run_id: str, *, lost: bool = False) -> None: ...

    async def finish_cancelled(self, record: RunRecord) -> None: ...

    async def wait(self, run_id: str, limit: float | None = None) -> RunRecord:
        raise NotImplementedError


async def test_the_lease_renewal_ends_when_its_stop_is_dropped() -> None:
    stage = Stage()

    class Renewing:
        async def renew_leases(self, owner: str, run_ids: Any, until: Any) -> list[RunRecord]:
            await stage.enter()
            return []

    claims = Claims(
        Holding(),
        lambda: Renewing(),  # type: ignore[arg-type,return-value]
        InProcessBus(),
        lambda: [],
        lease_seconds=0.03,
        poll_interval=3600,
    )
    claims.open()
    assert await stage.stop_as_it_returns(claims.close())


async def test_the_webhook_loop_ends_when_its_stop_is_dropped() -> None:
    stage = Stage()
    dispatcher = WebhookDispatcher(lambda: None)
    dispatcher._claim = stage.enter  # type: ignore[method-assign]
    async with dispatcher:
        assert await stage.stop_as_it_returns(dispatcher.close())


async def test_a_waiter_stopped_as_news_of_its_run_comes_ends() -> None:
    """A run's waiter (startRun(wait: true)) stopped as news of the run came (launched or
    ended here) went on waiting for the run's end: a request cancelled at shutdown kept
    polling for a run that may never end here."""
    settings = GatewaySettings(checkpointer=create_memory_checkpointer())
    async with Gateway(settings) as gw:
        executor, stage = gw.executor, Stage()
        elsewhere = RunRecord("r", "t", "slow", RunStatus.RUNNING)

        async def get_run(run_id: str) -> RunRecord:
            if stage.parked.is_set():  # asked again: the waiter went on
                stage.carried_on.set()
                await asyncio.sleep(0)  # (the news stays set: it would not yield else)
            stage.parked.set()
            return elsewhere

        executor.registry.get_run = get_run  # type: ignore[method-assign]
        waiter = asyncio.ensure_future(executor.wait("r"))
        await stage.parked.wait()  # asked once, and now waits for news of the run
        executor._news["r"].set()  # the news and the stop in one turn
        waiter.cancel()
        lost = asyncio.ensure_future(stage.carried_on.wait())
        await asyncio.wait([waiter, lost], return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        try:
            assert waiter.cancelled() and not stage.carried_on.is_set()
        finally:  # (with the news still set, wait_for drops every cancel)
            executor._news.get("r", asyncio.Event()).clear()
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)


async def test_a_bus_start_stopped_as_its_listener_is_ready_is_stopped() -> None:
    bus = PostgresBus("postgresql://unused", lambda: None, lambda: None, lambda _: False)  # type: ignore[arg-type,return-value]
    starting = asyncio.ensure_future(bus.start())

    async def listen() -> None:  # ready as the start-up is stopped, in one turn
        bus._ready.set()
        bus._settled.set()  # what `start` waits for (the first connection, or failure)
        starting.cancel()
        await asyncio.Event().wait()

    bus._listen = listen  # type: ignore[method-assign]
    try:
        with pytest.raises(asyncio.CancelledError):
            await starting
    finally:
        await bus.close()


class Idle(Holding):
    """An executor with nothing running, which notes what it is asked to launch."""

    active_runs = 0

    def __init__(self, *active: str) -> None:
        self.launched: list[str] = []
        self.cancelled: list[str] = []
        self.active = set(active)

    def is_active(self, run_id: str) -> bool:
        return run_id in self.active

    async def finish_cancelled(self, record: RunRecord) -> None:
        self.cancelled.append(record.run_id)

    def running(self) -> list[str]:
        return []

    def launch(self, record: RunRecord, *, resuming: bool) -> None:
        self.launched.append(record.run_id)


async def test_a_claim_pass_that_returns_after_shutdown_began_launches_nothing() -> None:
    """A pass waiting for the database as shutdown began launched what it claimed: a run
    missing from the drain's snapshot, whose lease nobody renewed after it. What it
    claimed is released, except a run still executing here (the claim renewed its
    lease: the drain's) and one whose cancel is under way (ended here, CANCELLED)."""
    go, parked = asyncio.Event(), asyncio.Event()
    released: list[str] = []

    class Claiming:
        async def claim_runs(self, owner: str, **kwargs: Any) -> list[RunRecord]:
            parked.set()
            await go.wait()
            return [
                RunRecord("r", "t", "slow", RunStatus.PENDING),
                RunRecord("here", "t", "slow", RunStatus.RUNNING),
                RunRecord("cancelling", "t", "slow", RunStatus.PENDING),
            ]

        async def release_runs(self, owner: str, run_ids: list[str]) -> None:
            released.extend(run_ids)

    runs = Idle("here")
    claims = Claims(runs, lambda: Claiming(), InProcessBus(), lambda: [])  # type: ignore[arg-type,return-value]
    passing = asyncio.ensure_future(claims.claim_once(cancels=False))
    await parked.wait()
    claims.stop_claiming()  # shutdown begins while the pass waits
    claims._stopping["cancelling"] += 1  # (as `cancel` marks it)
    go.set()
    await passing
    assert runs.launched == [] and released == ["r"] and runs.cancelled == ["cancelling"]


async def test_a_thread_stopped_twice_at_once_stays_stopping_until_both_end() -> None:
    """Two overlapping stops of one thread (the sweep and a user's deletion): the first
    to return unmarked it while the second still waited, and a run of it claimed then
    started."""
    gates = [asyncio.Event(), asyncio.Event()]
    asked: list[asyncio.Event] = []
    both_asked = asyncio.Event()

    class Unfinished:
        async def unfinished_runs(self, thread_id: str) -> list[RunRecord]:
            gate = gates[len(asked)]
            asked.append(gate)
            if len(asked) == 2:
                both_asked.set()
            await gate.wait()
            return []

    claims = Claims(Idle(), lambda: Unfinished(), InProcessBus(), lambda: [])  # type: ignore[arg-type,return-value]
    first = asyncio.ensure_future(claims.stop_thread("t"))
    second = asyncio.ensure_future(claims.stop_thread("t"))
    await both_asked.wait()
    gates[0].set()
    await first
    assert "t" in claims._stopping_threads  # the second stop still waits
    gates[1].set()
    await second
    assert "t" not in claims._stopping_threads


async def test_a_webhook_claim_returning_after_close_starts_no_attempt() -> None:
    """Closed while claiming (its cancel dropped), the loop started attempts of what it
    had claimed: tasks outliving `close`, posting with a closed client."""
    stage, attempted = Stage(), asyncio.Event()

    class Store:
        def on_enqueue(self, wake: Any) -> None: ...

        async def claim_deliveries(self, owner: str, **kwargs: Any) -> Claim:
            await stage.enter()
            return Claim(["delivery"], None)  # type: ignore[list-item]

    async def attempt(store: Any, delivery: Any) -> None:
        attempted.set()

    dispatcher = WebhookDispatcher(lambda: Store())  # type: ignore[arg-type,return-value]
    dispatcher._attempt = attempt  # type: ignore[method-assign]
    async with dispatcher:
        await stage.stop_as_it_returns(dispatcher.close())
        await asyncio.sleep(0)  # an attempt task, had one started, runs now
        assert not attempted.is_set() and dispatcher.in_flight == 0


async def test_a_lease_that_cannot_be_looked_at_leaves_the_end_to_its_own_check() -> None:
    """The look at a run's lease before its end failed with any error but an outage's (a
    busy pool): the error escaped the run's task, which left the run RUNNING, run
    again after its lease lapsed. The end's conditional write decides instead."""

    class Busy:
        async def renew_leases(self, owner: str, run_ids: Any, until: Any) -> list[RunRecord]:
            raise TimeoutError("the pool is busy")

    claims = Claims(Idle(), lambda: Busy(), InProcessBus(), lambda: [])  # type: ignore[arg-type,return-value]
    assert await claims.still_held("r")
