"""A thread kept across a recovery that another replica deletes, on SQLite and PostgreSQL.

A kept thread (a quarantined entry) reads from the fallback's copies where the
primary has none. Once another replica deleted it, a client that made the id
anew read the deleted thread's state from them; the tombstone's look that forgets
them does not wait for the journal's step lock unless the thread was deleted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.auth import ANONYMOUS
from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence import recovery
from code_hero.persistence.entries import PutCheckpoint
from code_hero.persistence.journal import Quarantined
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.runs.executor import StartRun
from tests.conftest import make_config
from tests.faults import until
from tests.persistence.proxied import SLOW_SPEC
from tests.persistence.test_degraded import SLOW_STEPS, _no_retry
from tests.persistence.test_tombstones import _checkpoint_config


@pytest.fixture(params=["sqlite", "postgres"])
def primary_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    # No health check of its own: the test has the outage and the recovery.
    return make_config(request.param, request, health_check_interval=3600)


@pytest.fixture
async def replicas(
    primary_config: CheckpointerConfig, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    """Replicas A and B on one primary; B's quarantined entries are never retried (a
    retry would find the deletion too)."""
    _no_retry(monkeypatch)
    settings = GatewaySettings(checkpointer=primary_config, graphs={"slow": SLOW_SPEC})
    async with (
        Gateway(replace(settings, sweep_interval=None)) as a,
        Gateway(replace(settings, sweep_interval=None)) as b,
    ):
        yield a, b


async def _a_thread_kept_across_a_recovery(gw: Gateway) -> str:
    """A thread born in B's outage, a run's state in it, with an entry the primary
    refused at the copy-back (quarantined): kept, its copies in the fallback."""
    router = gw.manager.router
    router.fail_primary(ConnectionRefusedError("refused"))  # an outage
    thread_id = (await gw.start_run(StartRun(graph="slow", input={}, wait=True))).thread_id
    refused = {"configurable": {"thread_id": thread_id, "checkpoint_ns": "refused"}}
    entry = PutCheckpoint(refused, empty_checkpoint(), {}, {})  # type: ignore[arg-type]
    router.journal.quarantine.append(Quarantined(entry, 1, "refused"))
    assert await router.probe(router.primary)
    assert await router.recover()
    assert router.serving and router.is_local(thread_id) and router.quarantined
    assert await _steps(gw, thread_id) == SLOW_STEPS
    return thread_id


async def _steps(gw: Gateway, thread_id: str) -> list[str] | None:
    found = await gw.manager.get_checkpointer().aget_tuple(_checkpoint_config(thread_id))
    return None if found is None else list(found.checkpoint["channel_values"]["steps"])


async def _listed(gw: Gateway, thread_id: str) -> list[Any]:
    saver = gw.manager.get_checkpointer()
    return [c async for c in saver.alist(_checkpoint_config(thread_id))]


@pytest.mark.parametrize("first", ["state", "checkpoints", "createThread"])
async def test_a_kept_thread_deleted_elsewhere_and_made_anew_reads_nothing_of_the_old(
    replicas: tuple[Gateway, Gateway], first: str
) -> None:
    """B keeps thread t across a recovery; A deletes t, to the end; a client reads t
    through B (its state, its checkpoints) or makes it anew there (`createThread`,
    which looks for history with no owner). PostgreSQL or SQLite has nothing of t, so
    the read fell back to B's copies: the deleted thread's state (and `createThread`
    took it for history: CONFLICT). The read finds t's tombstone and forgets them."""
    a, b = replicas
    thread_id = await _a_thread_kept_across_a_recovery(b)
    assert (await a.delete_thread(thread_id)).deleted

    if first == "state":
        assert await _steps(b, thread_id) is None
    elif first == "checkpoints":
        assert await _listed(b, thread_id) == []
    made = await b.create_thread(thread_id=thread_id, caller=ANONYMOUS)
    assert made.thread_id == thread_id
    assert await _steps(b, thread_id) is None
    assert await _listed(b, thread_id) == []
    router = b.manager.router
    assert not router.is_local(thread_id) and not router.quarantined


async def test_an_admission_on_a_kept_thread_not_deleted_does_not_wait_for_the_step_lock(
    replicas: tuple[Gateway, Gateway],
) -> None:
    """The admission's look at the tombstones ran under the journal's step lock: with a
    quarantine retry replaying (the lock held, up to its step timeout per entry), every
    admission on a kept thread waited for it, deleted or not. It looks first; only a
    thread found deleted takes the lock."""
    _, b = replicas
    thread_id = await _a_thread_kept_across_a_recovery(b)
    router = b.manager.router
    lock = router.journal.step_lock
    run = RunRecord(str(uuid.uuid4()), thread_id, "slow", RunStatus.PENDING)

    async with lock:  # a retry's replay, say
        admission = asyncio.create_task(b.manager.registry.admit_run(run, reject_if_busy=False))

        async def settled() -> bool:
            return admission.done() or bool(getattr(lock, "_waiters", None))

        await until(settled)
        assert admission.done()  # not waiting for the lock
    admitted, _ = await admission
    assert admitted is not None and admitted.run_id == run.run_id
    assert router.is_local(thread_id) and router.quarantined  # kept: not deleted


async def test_a_list_of_a_thread_made_anew_elsewhere_lists_nothing_of_the_deleted_one(
    replicas: tuple[Gateway, Gateway],
) -> None:
    # A deletes kept t, makes it anew and runs on it: B's list merged the primary's
    # checkpoints with B's copies of the deleted thread's (review).
    a, b = replicas
    thread_id = await _a_thread_kept_across_a_recovery(b)
    old = {c.checkpoint["id"] for c in await _listed(b, thread_id)}
    assert (await a.delete_thread(thread_id)).deleted
    await a.start_run(StartRun(thread_id=thread_id, graph="slow", input={}, wait=True))
    listed = {c.checkpoint["id"] for c in await _listed(b, thread_id)}
    assert listed and not (listed & old)


@pytest.mark.parametrize("primary_config", ["postgres"], indirect=True)
async def test_a_slow_tombstone_look_fails_nothing_over(
    replicas: tuple[Gateway, Gateway],
    primary_config: CheckpointerConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The tombstones locked by another session (a slow primary that answers): a read of a
    # kept thread the primary has nothing of gives up the look, not the primary (review).
    _, b = replicas
    thread_id = await _a_thread_kept_across_a_recovery(b)
    monkeypatch.setattr(recovery, "step_timeout", lambda config: 0.5)
    async with await psycopg.AsyncConnection.connect(primary_config.connection_string) as conn:
        await conn.execute("LOCK TABLE code_hero_deleted_threads IN ACCESS EXCLUSIVE MODE")
        config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": "none-here"}}
        try:
            assert await b.manager.get_checkpointer().aget_tuple(config) is None
        finally:
            await conn.rollback()
    assert b.manager.router.serving
    assert thread_id in b.manager.router.local_threads  # its copies stay: not known deleted
