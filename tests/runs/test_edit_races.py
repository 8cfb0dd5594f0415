"""updateState against startRun on one thread, on SQLite and PostgreSQL: the edit's claim
and the run's admission exclude each other, so an edit reported saved is never lost.

Before the claim the edit checked for runs, then wrote: a run admitted in between
started from the checkpoint the edit superseded, and the edit landed on a branch the
run never read (or the run's next checkpoint went past it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.errors import BackendUnavailableError, BadInputError, ConflictError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.checkpoints import CheckpointView
from code_hero.persistence.records import RunRecord, RunStatus, ThreadStatus
from code_hero.runs.executor import MultitaskStrategy, StartRun
from code_hero.runs.requests import UpdateState
from tests.conftest import make_config
from tests.faults import BlackHoleProxy, until, with_port
from tests.persistence.test_degraded import PG_PORT
from tests.runs.conftest import SLOW_SPEC, idle_thread

PAIRS = 48


@pytest.fixture(params=["sqlite", "postgres"])
async def gw(request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        checkpointer=make_config(request.param, request), graphs={"slow": SLOW_SPEC}
    )
    async with Gateway(settings) as gateway:
        yield gateway


async def _edit(gw: Gateway, thread_id: str) -> CheckpointView | ConflictError:
    try:
        return await gw.update_state(UpdateState(thread_id, {"steps": ["edited"]}))
    except ConflictError as refused:
        return refused


async def _run(gw: Gateway, thread_id: str, after: float) -> RunRecord | ConflictError:
    await asyncio.sleep(after)  # spreads the starts over the edit's course
    try:
        return await gw.start_run(
            StartRun(thread_id=thread_id, graph="slow", input={"delay": 0}, wait=True)
        )
    except ConflictError as refused:
        return refused


def _after(pair: int) -> float:
    """How long after its edit the pair's run starts: the pairs sweep the edits' course."""
    return 0.002 * pair


async def _ancestors(gw: Gateway, thread_id: str, run_id: str) -> set[str]:
    """The ids the run's first checkpoint descends from."""
    page = await gw.manager.list_checkpoints(thread_id, first=100)
    by_id = {c.checkpoint_id: c for c in page.items}
    first = min((c for c in page.items if c.run_id == run_id), key=lambda c: c.step)
    seen: set[str] = set()
    parent = first.parent_id
    while parent is not None:
        seen.add(parent)
        parent = by_id[parent].parent_id
    return seen


async def _retried(gw: Gateway, thread_id: str, run: RunRecord | ConflictError) -> RunRecord:
    """The run, or one started again as a refused caller would, after `retryAfter`: the
    edit it was refused for has ended (the pairs have all returned), so it starts now."""
    if isinstance(run, RunRecord):
        return run
    assert run.retry_after == 1 and "being edited" in str(run)
    again = await _run(gw, thread_id, 0)
    assert isinstance(again, RunRecord)
    return again


async def test_an_edit_and_a_run_on_one_thread_never_both_succeed_apart(gw: Gateway) -> None:
    """Many (updateState, startRun) pairs on fresh threads, each run started a little later
    than the last: in each pair one is refused (CONFLICT), or the run starts from the
    edit; and the thread's status is the run's end."""
    threads = await asyncio.gather(*(idle_thread(gw) for _ in range(PAIRS)))
    pairs = await asyncio.gather(
        *(asyncio.gather(_edit(gw, t), _run(gw, t, _after(i))) for i, t in enumerate(threads))
    )
    runs = await asyncio.gather(
        *(_retried(gw, t, run) for t, (_, run) in zip(threads, pairs, strict=True))
    )
    lost = []
    for thread_id, (edit, _), run in zip(threads, pairs, runs, strict=True):
        assert run.status is RunStatus.SUCCESS
        if isinstance(edit, ConflictError):  # refused while the run was in flight
            assert "busy with run" in str(edit)
        elif edit.checkpoint_id not in await _ancestors(gw, thread_id, run.run_id):
            lost.append(thread_id)
        thread = await gw.get_thread(thread_id)
        assert thread is not None and thread.status is ThreadStatus.IDLE
    assert lost == []


async def test_a_lapsed_claim_blocks_no_run_and_a_refused_edit_releases_its_claim(
    gw: Gateway,
) -> None:
    registry = gw.manager.registry
    thread_id = await idle_thread(gw)
    # A claim held: runs are refused, whatever their multitask strategy.
    assert (
        await registry.claim_edit(thread_id, datetime.now(UTC) + timedelta(minutes=1), seen=True)
        is None
    )
    for multitask in MultitaskStrategy:
        with pytest.raises(ConflictError) as refused:
            await gw.start_run(
                StartRun(thread_id=thread_id, graph="slow", input={}, multitask=multitask)
            )
        assert refused.value.retry_after == 1
    with pytest.raises(ConflictError):  # and so is another edit
        await gw.update_state(UpdateState(thread_id, {"steps": ["edited"]}))

    # A claim whose process died (never released) lapses: it blocks nothing after.
    other = await idle_thread(gw)
    assert (
        await registry.claim_edit(other, datetime.now(UTC) - timedelta(seconds=1), seen=True)
        is None
    )
    run = await gw.start_run(StartRun(thread_id=other, graph="slow", input={"delay": 0}, wait=True))
    assert run.status is RunStatus.SUCCESS

    # An edit refused for its values releases its claim at once.
    third = await idle_thread(gw)
    with pytest.raises(BadInputError):
        await gw.update_state(UpdateState(third, {"no_such_key": 1}))
    with pytest.raises(BadInputError):
        await gw.update_state(UpdateState(third, {"steps": "not a list"}))
    run = await gw.start_run(StartRun(thread_id=third, graph="slow", input={"delay": 0}, wait=True))
    assert run.status is RunStatus.SUCCESS


async def test_an_edit_saved_is_reported_saved_when_its_claim_cannot_be_released(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A release that fails (a saturated pool, an outage) leaves the claim to lapse: the
    edit was saved, and an error would have the client apply it twice."""
    registry = gw.manager.registry
    thread_id = await idle_thread(gw)

    async def unreachable(thread_id: str, until: datetime) -> None:
        raise BackendUnavailableError("the pool is busy")

    monkeypatch.setattr(registry, "release_edit", unreachable)
    view = await gw.update_state(UpdateState(thread_id, {"steps": ["edited"]}))
    assert view.values["steps"][-1] == "edited"
    assert "could not end the edit claim" in caplog.text
    with pytest.raises(ConflictError):  # the claim holds until it lapses
        await gw.start_run(StartRun(thread_id=thread_id, graph="slow", input={}))


@pytest.mark.postgres
async def test_the_fallback_keeps_an_edit_and_a_run_apart_during_an_outage(
    pg_database: str,
) -> None:
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port), pool_timeout=1, health_check_interval=0.2
        )
        settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_SPEC})
        async with Gateway(settings) as gw:
            old = await idle_thread(gw)
            proxy.refuse()
            await until(lambda: _degraded(gw))
            registry = gw.manager.registry
            held = datetime.now(UTC) + timedelta(minutes=1)
            with pytest.raises(BackendUnavailableError):  # the primary's thread: not here
                await registry.claim_edit(old, held, seen=True)

            born = await idle_thread(gw)  # the fallback holds all of it
            assert await registry.claim_edit(born, held, seen=True) is None
            with pytest.raises(ConflictError) as refused:
                await gw.start_run(StartRun(thread_id=born, graph="slow", input={}))
            assert refused.value.retry_after == 1
            await registry.release_edit(born, held)
            run = await gw.start_run(StartRun(thread_id=born, graph="slow", input={}, wait=True))
            assert run.status is RunStatus.SUCCESS


async def _degraded(gw: Gateway) -> bool:
    return gw.manager.overall_status == "degraded"
