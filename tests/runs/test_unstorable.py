"""What a graph produces that a database cannot store: the run still ends, and says why.

Inputs with a NUL are refused up front (BAD_USER_INPUT); what a graph produces is
not the caller's to fix. Its events and output are stored with every NUL (and lone
surrogate) replaced by U+FFFD on every backend; its checkpoints are the saver's:
PostgreSQL's saver refuses a NUL in the checkpoint's jsonb, so there the run ends
ERROR naming the refusal, where SQLite and memory store it and the run succeeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.events import terminal_status
from code_hero.runs.executor import StartRun
from tests.runs.conftest import SLOW_SPEC, the_next_end_fails

NUL_SPEC = f"{Path(__file__).with_name('nul_graph.py')}:graph"
RAISE_NUL_SPEC = f"{Path(__file__).with_name('raise_nul_graph.py')}:graph"
LIMIT = 60  # generous: without the fix these runs never end


@pytest.fixture
async def gateway(backend_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        checkpointer=backend_config, graphs={"nul": NUL_SPEC, "raise_nul": RAISE_NUL_SPEC, "slow": SLOW_SPEC},
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


async def _collect(stream: AsyncIterator[object]) -> list[object]:
    return [event async for event in stream]
