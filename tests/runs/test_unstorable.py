"""What a graph produces that a database cannot store: the run still ends, and says why.

Inputs with a NUL are refused up front (BAD_USER_INPUT); what a graph produces is
not the caller's to fix. Its events and output are stored with every NUL (and lone
surrogate) replaced by U+FFFD on every backend; its checkpoints are the saver's:
PostgreSQL's saver refuses a NUL in the checkpoint's jsonb, so there the run ends
ERROR naming the refusal, where SQLite and memory store it and the run succeeds.

A NaN or an infinity, which PostgreSQL's jsonb refuses, is stored there as null;
an event the database refuses all the same is stored saying so, and does not hold
up the other runs' events stored in the same batch.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.errors import ConflictError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import EventRecord, RunStatus
from code_hero.runs.eventlog import RunEventWriter
from code_hero.runs.events import EventType, terminal_status, translate
from code_hero.runs.executor import StartRun
from tests.runs.conftest import SLOW_SPEC, the_next_end_fails

NUL_SPEC = f"{Path(__file__).with_name('nul_graph.py')}:graph"
RAISE_NUL_SPEC = f"{Path(__file__).with_name('raise_nul_graph.py')}:graph"
LIMIT = 60  # generous: without the fix these runs never end


@pytest.fixture
async def gateway(backend_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        checkpointer=backend_config,
        graphs={"nul": NUL_SPEC, "raise_nul": RAISE_NUL_SPEC, "slow": SLOW_SPEC},
    )
    async with Gateway(settings) as gw:
        yield gw


async def test_a_graph_that_returns_a_nul_ends_its_run(
    gateway: Gateway, backend_config: CheckpointerConfig
) -> None:
    start = gateway.start_run(StartRun(graph="nul", input={}, wait=True))
    run = await asyncio.wait_for(start, LIMIT)
    following = await gateway.follow_run(run.run_id)
    followed = await asyncio.wait_for(_collect(following), LIMIT)
    events = await gateway.run_events(run.run_id, first=1000)
    assert followed == events
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e for e in events if terminal_status(e)] == events[-1:]
    assert events[-1].payload == {"status": run.status.value, "error": run.error}
    updates = [e.payload["update"] for e in events if e.type == "node_update"]
    assert updates == [{"text": "zero\ufffdbyte"}], "stored, NUL replaced, on every backend"
    if backend_config.kind == "postgres":
        # The stock saver refuses the checkpoint: the run ends ERROR, saying so.
        assert run.status is RunStatus.ERROR and run.output is None
        assert "UntranslatableCharacter" in (run.error or "")
        assert "channel_values" in (run.error or "")
    else:
        assert run.status is RunStatus.SUCCESS and run.error is None
        assert run.output == {"text": "zero\ufffdbyte"}
    assert await gateway.get_run(run.run_id) == run


async def test_an_end_the_database_refuses_ends_the_run_as_error(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A value the database refuses at the end (here injected): the run's task died
    # with it ("Task exception was never retrieved"), the run RUNNING for ever and
    # startRun(wait) never answered; a next claimer would fail the same way.
    refused = OverflowError("a value the database cannot store")
    the_next_end_fails(gateway, monkeypatch, refused)
    start = gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
    run = await asyncio.wait_for(start, LIMIT)
    assert run.status is RunStatus.ERROR and run.output is None
    assert "the run ended SUCCESS but the database refused to store that end" in (run.error or "")
    assert "a value the database cannot store" in (run.error or "")
    events = await gateway.run_events(run.run_id, first=1000)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e for e in events if terminal_status(e)] == events[-1:]
    assert events[-1].payload == {"status": "ERROR", "error": run.error}


async def test_a_node_raising_a_nul_ends_its_run(gateway: Gateway) -> None:
    # The error's text is in the run's error and in its timeline: a step (a frozen
    # dataclass, in a tuple) records it too. Unreplaced there, PostgreSQL refused
    # the end, and the ERROR end that followed it with the same steps: RUNNING for ever.
    start = gateway.start_run(StartRun(graph="raise_nul", input={}, wait=True))
    run = await asyncio.wait_for(start, LIMIT)
    assert run.status is RunStatus.ERROR
    assert run.error == "ValueError: zero\ufffdbyte"
    assert [step.error for step in run.steps] == ["ValueError: zero\ufffdbyte"]
    assert await gateway.get_run(run.run_id) == run


async def test_an_end_refused_again_with_its_steps_still_ends(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database that refuses whatever the run's steps hold, at every try: the ERROR
    # end writes only its status and error, so it is not refused for the same reason.
    registry = gateway.manager.registry
    finish_run = registry.finish_run

    async def refuse_steps(run_id: str, *args: Any, **kw: Any) -> Any:
        if kw.get("steps"):
            raise OverflowError("a step the database cannot store")
        return await finish_run(run_id, *args, **kw)

    monkeypatch.setattr(registry, "finish_run", refuse_steps)
    start = gateway.start_run(StartRun(graph="raise_nul", input={}, wait=True))
    run = await asyncio.wait_for(start, LIMIT)
    assert run.status is RunStatus.ERROR and run.output is None
    assert "the run ended ERROR but the database refused to store that end" in (run.error or "")
    assert "a step the database cannot store" in (run.error or "")


def test_an_agent_transition_holds_only_json() -> None:
    # Its `from` and `reason` were stored as the graph gave them: a NaN passed
    # storable's check and reached PostgreSQL as NaN, which jsonb refuses.
    [(kind, payload)] = translate(
        (),
        "custom",
        {"type": "agent_transition", "from": float("nan"), "to": "b", "reason": {1: b"x"}},
    )
    assert kind is EventType.AGENT_TRANSITION
    assert payload == {
        "from": "nan",
        "to": "b",
        "reason": {"1": {"__type__": "bytes", "base64": "eA=="}},
    }


async def test_a_nan_or_an_infinity_in_an_event_is_stored(
    gateway: Gateway, backend_config: CheckpointerConfig
) -> None:
    # json.dumps writes NaN and Infinity, which PostgreSQL's jsonb refuses: the batch
    # holding such an event, every run's events in it, was retried for ever.
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
    writer = await gateway.events.writer(run.run_id, run.thread_id)
    sent = writer.emit(EventType.CUSTOM, {"n": [math.nan, math.inf, -math.inf, 1.5]})
    await gateway.events.flush()
    [stored] = [e for e in await gateway.run_events(run.run_id, first=1000) if e.seq == sent.seq]
    # As orjson writes them for PostgreSQL; SQLite's text and memory kept them as
    # `NaN` and `Infinity`, which SQLite's JSON functions (metadata filters) refuse.
    assert stored.payload["n"] == [None, None, None, 1.5], backend_config.kind


async def test_a_refused_event_does_not_hold_up_the_other_runs_events(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Events of every run are stored in one batch: a value the database refused in
    # one run's event failed the batch, retried whole for ever, every run's events with it.
    wa, wb = await _two_runs_writers(gateway)
    _refusing(gateway, monkeypatch)
    before = wa.emit(EventType.CUSTOM, {"n": 1})
    refused = wa.emit(EventType.CUSTOM, {"n": "refused"})
    after = wa.emit(EventType.CUSTOM, {"n": 2})
    other = wb.emit(EventType.CUSTOM, {"n": 3})
    await gateway.events.flush()
    assert wa.unstored() == [] and wb.unstored() == []
    stored_a = {e.seq: e.payload for e in await gateway.run_events(wa.run_id, first=1000)}
    assert stored_a[before.seq] == {"n": 1} and stored_a[after.seq] == {"n": 2}
    assert stored_a[refused.seq] == {
        "refused": "OverflowError: injected: a value the database cannot store"
    }
    assert sorted(stored_a) == list(range(1, len(stored_a) + 1)), "no gap"
    stored_b = await gateway.run_events(wb.run_id, first=1000)
    assert stored_b[-1].seq == other.seq and stored_b[-1].payload == {"n": 3}


async def test_a_refused_event_whose_placeholder_collides_fences_its_run(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another executor stored the run's seq already: the placeholder for the refused
    # event collides. The run is fenced (as a collision of its first store fences it),
    # not queued again at every flush with the other runs' events behind it.
    wa, wb = await _two_runs_writers(gateway)
    _refusing(gateway, monkeypatch, placeholder_collides=True)
    wa.emit(EventType.CUSTOM, {"n": "refused"})
    other = wb.emit(EventType.CUSTOM, {"n": 3})
    await gateway.events.flush()
    assert wa.closed and wa.unstored() == []
    stored_b = await gateway.run_events(wb.run_id, first=1000)
    assert stored_b[-1].seq == other.seq and stored_b[-1].payload == {"n": 3}


async def test_an_int_no_json_text_can_hold_is_refused_not_retried_for_ever(
    gateway: Gateway,
) -> None:
    # Python will not write an int of more than 4,300 digits as text: a ValueError,
    # which is no refusal (aiosqlite raises one on a closed connection); raised as
    # one from the JSON writing, the batch failed whole at every flush.
    wa, wb = await _two_runs_writers(gateway)
    big = wa.emit(EventType.CUSTOM, {"n": 10**5000})
    other = wb.emit(EventType.CUSTOM, {"n": 3})
    await gateway.events.flush()
    assert wa.unstored() == [] and wb.unstored() == []
    [stored] = [e for e in await gateway.run_events(wa.run_id, first=1000) if e.seq == big.seq]
    assert "not storable as JSON" in stored.payload["refused"]  # memory's JSON copy too
    stored_b = await gateway.run_events(wb.run_id, first=1000)
    assert stored_b[-1].seq == other.seq and stored_b[-1].payload == {"n": 3}


async def _two_runs_writers(gateway: Gateway) -> tuple[RunEventWriter, RunEventWriter]:
    """The event writers of two runs, their events to be stored in one batch."""
    writers = []
    for _ in range(2):
        run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
        writers.append(await gateway.events.writer(run.run_id, run.thread_id))
    return writers[0], writers[1]


def _refusing(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, *, placeholder_collides: bool = False
) -> None:
    """The registry refuses an event `{"n": "refused"}` (a value it cannot store) and,
    `placeholder_collides`, the placeholder stored for it (another executor's seq)."""
    registry = gateway.manager.registry
    store_batch = registry.store_batch

    async def refusing(events: list[EventRecord], runs: dict[str, Any], **lease: Any) -> set[str]:
        if any(e.payload.get("n") == "refused" for e in events):
            raise OverflowError("injected: a value the database cannot store")
        if placeholder_collides and any("refused" in e.payload for e in events):
            raise ConflictError("injected: the seq is another executor's")
        return await store_batch(events, runs, **lease)

    monkeypatch.setattr(registry, "store_batch", refusing)


async def _collect(stream: AsyncIterator[object]) -> list[object]:
    return [event async for event in stream]
