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

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.events import terminal_status
from code_hero.runs.executor import StartRun
from tests.runs.conftest import SLOW_SPEC, the_next_end_fails

NUL_SPEC = f"{Path(__file__).with_name('nul_graph.py')}:graph"
LIMIT = 60  # generous: without the fix these runs never end


@pytest.fixture
async def gateway(backend_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        checkpointer=backend_config, graphs={"nul": NUL_SPEC, "slow": SLOW_SPEC}
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
    refused = ValueError("a value the database cannot store")
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


async def _collect(stream: AsyncIterator[object]) -> list[object]:
    return [event async for event in stream]
