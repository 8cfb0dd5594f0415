"""A run's `CheckpointSaved` events keep their place among its other events, in every
namespace: each namespace's events read its input checkpoint, then for every step the
step's node updates and then that step's checkpoint. A checkpoint is announced once its
save returned and the stream reached it: a subgraph's save, made in the node's task, can
return while the parent's stream still holds that step's update."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from code_hero.config import CheckpointerConfig
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.events import EventType
from code_hero.runs.executor import StartRun
from tests.runs.conftest import SLOW_SPEC

SPEC = f"{Path(__file__).with_name('subgraph_graph.py')}:graph"


async def test_each_checkpoint_event_follows_its_steps_updates_in_every_namespace(
    backend_config: CheckpointerConfig,
) -> None:
    settings = GatewaySettings(checkpointer=backend_config, graphs={"g": SPEC})
    async with Gateway(settings) as gw:
        for _ in range(5):  # a race between two tasks: a few runs
            run = await gw.start_run(StartRun(graph="g", input={}, wait=True))
            assert run.status is RunStatus.SUCCESS
            events = await gw.events.read(run.run_id)
            shapes: dict[str, list[str]] = defaultdict(list)
            for event in events:
                if event.type == EventType.CHECKPOINT:
                    shapes[str(event.payload["namespace"])].append(f"C{event.payload['step']}")
                elif event.type == EventType.NODE_UPDATE:
                    shapes[str(event.payload["namespace"])].append(f"U:{event.payload['node']}")
            sub = [ns for ns in shapes if ns]
            assert len(sub) == 1, dict(shapes)
            assert shapes[sub[0]] == ["C-1", "C0", "U:inner_a", "C1", "U:inner_b", "C2"], dict(
                shapes
            )
            # (step 0 is __start__'s: it streams no update)
            assert shapes[""] == [
                "C-1",
                "C0",
                "U:n0",
                "C1",
                "U:team",
                "C2",
                "U:n1",
                "C3",
                "U:n2",
                "C4",
            ], dict(shapes)


async def test_a_resumed_run_announces_exactly_the_checkpoints_it_stored(
    backend_config: CheckpointerConfig,
) -> None:
    # The interrupted run and the run resuming it: each announces the checkpoints whose
    # metadata names it (LangGraph writes the run id in each), in the order stored.
    settings = GatewaySettings(checkpointer=backend_config, graphs={"slow": SLOW_SPEC})
    async with Gateway(settings) as gw:
        asked = await gw.start_run(
            StartRun(graph="slow", input={"delay": 0, "ask_at": "s2"}, wait=True)
        )
        assert asked.status is RunStatus.INTERRUPTED
        resumed = await gw.start_run(
            StartRun(graph="slow", thread_id=asked.thread_id, resume="go on", wait=True)
        )
        assert resumed.status is RunStatus.SUCCESS
        stored = await gw.manager.list_checkpoints(asked.thread_id, first=100)
        for run in (asked, resumed):
            events = await gw.events.read(run.run_id, types=[str(EventType.CHECKPOINT)])
            mine = [
                c.checkpoint_id
                for c in reversed(stored.items)
                if (c.metadata or {}).get("run_id") == run.run_id
            ]
            assert mine, "no checkpoint of the run: nothing to compare"
            assert [e.payload["checkpoint_id"] for e in events] == mine
