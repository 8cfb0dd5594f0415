"""An idle webhook worker sleeps until something can be due, and misses nothing.

Two replicas on one database (SQLite file, PostgreSQL): the worker under test on
one registry, the other replica a second registry with no worker (it died before
attempting its delivery, or after claiming it). Time is driven by the test: the
worker's waits are handed to it (`Steps`), and `clock.wall` moves on by each
wait it lets pass, so a 30 s sleep takes no time and nothing is timed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.persistence import clock
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from code_hero.persistence.webhooks import RUN_WEBHOOK_KEY, Claim, DeliveryRecord
from code_hero.runs.destinations import parse_allow_list
from code_hero.runs.webhooks import WebhookDispatcher, WebhookSettings
from tests.conftest import make_config
from tests.webhook_receiver import Receiver, receiver

CAP = 30.0
SECRET = "whsec_" + "c2VjcmV0LW9mLXJ1bi13ZWJob29rcw=="


class Steps:
    """The worker's waits, one at a time: the test reads what it asked for, then lets
    that much time pass (the worker's `clock` moves on) and the worker go on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = clock.wall
        self.shift = timedelta(0)
        monkeypatch.setattr(clock, "wall", lambda: real() + self.shift)
        self._asked: asyncio.Queue[tuple[float, asyncio.Event]] = asyncio.Queue()
        self._go = asyncio.Event()

    async def wait(self, wake: asyncio.Event, seconds: float) -> None:
        go = asyncio.Event()
        self._asked.put_nowait((seconds, go))
        await go.wait()

    async def asked(self) -> float:
        """The seconds the worker's next wait is for (it is waiting now)."""
        async with asyncio.timeout(20):  # a guard against a hang, not a measure
            seconds, self._go = await self._asked.get()
        return seconds

    def elapse(self, seconds: float) -> None:
        """`seconds` pass: the waiting worker goes on."""
        self.shift += timedelta(seconds=seconds)
        self._go.set()


class Counted:
    """A registry whose claims are counted (and what they leased kept)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.claims = 0
        self.claimed: list[DeliveryRecord] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def claim_deliveries(self, owner: str, **kwargs: Any) -> Claim:
        self.claims += 1
        claim: Claim = await self.store.claim_deliveries(owner, **kwargs)
        self.claimed += claim.deliveries
        return claim


@pytest.fixture(autouse=True)
def own_clock() -> Any:
    clock.reset()
    yield
    clock.reset()


@pytest.fixture(params=["sqlite", "postgres"])
def config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    return make_config(request.param, request)


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    async with receiver() as r:
        yield r


def settings(**more: Any) -> WebhookSettings:
    return WebhookSettings(allow=parse_allow_list("127.0.0.1"), secret=SECRET, **more)


async def enqueue(replica: Backend, url: str) -> None:
    """A run ends on `replica`, with its own webhook: one PENDING delivery, due now."""
    now = clock.now()
    await replica.registry.put_thread(ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now))
    run = RunRecord(
        "0d6f9e52-3b1c-4a7e-8f21-9c4b5a6d7e80",
        "t",
        "g",
        RunStatus.SUCCESS,
        created_at=now,
        finished_at=now,
        user_id="u",
        config={RUN_WEBHOOK_KEY: url},
    )
    await replica.registry.put_run(run, announce=True)


async def test_an_idle_worker_claims_once_a_cap_not_once_a_second(
    config: CheckpointerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing PENDING: five minutes of an idle gateway are ten claims, not 300."""
    steps = Steps(monkeypatch)
    async with open_backend(config) as backend:
        store = Counted(backend.registry)
        async with WebhookDispatcher(lambda: store, settings(idle_poll=CAP), wait=steps.wait):
            passed = 0.0
            while passed < 300:
                seconds = await steps.asked()
                passed += seconds
                steps.elapse(seconds)
            assert store.claims == 10 and passed == 300
        # By default the cap is the lease: no longer than a dead claimer's lease holds.
        async with WebhookDispatcher(lambda: store, settings(), wait=steps.wait) as default:
            assert await steps.asked() == default.settings.lease.total_seconds() == 25
            steps.elapse(0)


async def test_a_delivery_another_replica_never_attempted_is_picked_up_within_the_cap(
    config: CheckpointerConfig, monkeypatch: pytest.MonkeyPatch, hooks: Receiver
) -> None:
    """The replica that enqueued it (whose worker would have woken at once) died before
    trying: this one, asleep for the cap, finds it at its next claim."""
    steps = Steps(monkeypatch)
    async with open_backend(config) as here, open_backend(config) as there:
        store = Counted(here.registry)
        async with WebhookDispatcher(lambda: store, settings(idle_poll=CAP), wait=steps.wait):
            assert await steps.asked() == CAP  # nothing PENDING yet
            await enqueue(there, f"{hooks.url}/own")  # this worker is not woken by it
            assert store.claimed == []
            steps.elapse(CAP)
            assert len(await hooks.wait_for("/own")) == 1  # delivered once
            assert store.claims == 2 and [d.url for d in store.claimed] == [f"{hooks.url}/own"]


async def test_a_delivery_whose_claimer_died_is_picked_up_when_its_lease_lapses(
    config: CheckpointerConfig, monkeypatch: pytest.MonkeyPatch, hooks: Receiver
) -> None:
    """Another replica claimed it and died: this one sleeps until that lease ends (not
    the cap, not a second at a time), then claims and delivers it."""
    steps = Steps(monkeypatch)
    async with open_backend(config) as here, open_backend(config) as there:
        await enqueue(there, f"{hooks.url}/own")
        now = clock.now()
        until = now + timedelta(seconds=20)
        (dead,) = (
            await there.registry.claim_deliveries("dead-replica", now=now, until=until, limit=5)
        ).deliveries
        store = Counted(here.registry)
        async with WebhookDispatcher(lambda: store, settings(idle_poll=CAP), wait=steps.wait):
            seconds = await steps.asked()
            assert store.claimed == [] and 19 < seconds <= 20  # until the lease ends
            steps.elapse(seconds)
            assert len(await hooks.wait_for("/own")) == 1  # delivered once
            assert store.claims == 2
            assert [d.delivery_id for d in store.claimed] == [dead.delivery_id]
