"""The inbox's registry reads (`pending_interrupts`) do not grow with its threads: the
newest INTERRUPTED runs of a page in one query, and, for the threads with none (a copy,
or deleteRun took it), their newest runs of any status in one more (it was a query per
such thread)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun
from code_hero.runs.interrupts import pending_interrupts

QUESTIONS = f"{Path(__file__).parents[1] / 'graphql' / 'questions_graph.py'}:graph"


@pytest.fixture
async def gateway(backend_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    # The default graph is the built-in one: a thread read on it shows no questions.
    settings = GatewaySettings(checkpointer=backend_config, graphs={"questions": QUESTIONS})
    async with Gateway(settings) as gw:
        assert gw.graph_registry.default != "questions"
        yield gw


async def test_threads_whose_asking_run_is_gone_cost_one_query_together(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = gateway
    registry = gw.manager.registry
    asked = [await gw.start_run(StartRun(graph="questions", input={}, wait=True)) for _ in range(4)]
    assert {r.status for r in asked} == {RunStatus.INTERRUPTED}
    for run in asked[:3]:  # three lose the run that asked; one keeps it
        assert await gw.delete_run(run.run_id)
    threads = [await registry.get_thread(r.thread_id) for r in asked]

    calls: list[tuple[str, Any]] = []
    for name in ("latest_runs", "list_runs"):
        real = getattr(registry, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls.append((_name, args[1] if len(args) > 1 else kw.get("status")))
            return _real(*args, **kw)

        monkeypatch.setattr(registry, name, spy)
    found = await pending_interrupts(registry, gw.graph_registry, [t for t in threads if t])
    assert calls == [("latest_runs", RunStatus.INTERRUPTED), ("latest_runs", None)]
    for run in asked:  # each read on the questions graph: its two questions
        waiting = found[run.thread_id]
        assert sorted(p.node for p in waiting) == ["a", "b"]
        assert {p.run_id for p in waiting} == {None if run in asked[:3] else run.run_id}
