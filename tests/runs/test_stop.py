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
        starting.cancel()
        await asyncio.Event().wait()

    bus._listen = listen  # type: ignore[method-assign]
    try:
        with pytest.raises(asyncio.CancelledError):
            await starting
    finally:
        await bus.close()
