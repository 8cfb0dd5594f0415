"""Run timelines and usage: `Run.steps`, `Run.durationMs` and `Run.usage`, recorded as runs go.

Real runs over GraphQL on SQLite and PostgreSQL: the default offline graph
(supervisor, a team subgraph, its lead and an expert) and the slow test graph
cancelled mid-step.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from code_hero.agents.catalog import SUPERVISOR, TEAMS
from code_hero.persistence.records import RunRecord, StepRecord
from code_hero.runs.timeline import ABANDONED, CANCELLED, Timeline
from tests.graphql.clients import data, gql
from tests.graphql.conftest import Server

RUN = """query($id: ID!) {
  run(id: $id) {
    status startedAt finishedAt durationMs output
    usage { inputTokens outputTokens totalTokens }
    steps { node namespace startedAt finishedAt durationMs error }
  }
}"""
START = """mutation($input: StartRunInput!) { startRun(input: $input) { id status } }"""


def ms(start: str, end: str) -> float:
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds / 1000


async def run_of(server: Server, run_id: str) -> dict[str, Any]:
    result: dict[str, Any] = data(await gql(server.http, RUN, {"id": run_id}))["run"]
    return result


async def test_a_run_of_the_default_graph_records_its_steps_and_usage(server: Server) -> None:
    started = data(
        await gql(
            server.http,
            START,
            {"input": {"message": "Write a FastAPI endpoint for orders", "wait": True}},
        )
    )["startRun"]
    assert started["status"] == "SUCCESS"
    run = await run_of(server, started["id"])

    assert run["durationMs"] == ms(run["startedAt"], run["finishedAt"]) > 0
    steps = run["steps"]
    starts = [s["startedAt"] for s in steps]
    assert starts == sorted(starts)  # start order
    assert all(s["error"] is None and s["finishedAt"] for s in steps)
    assert all(s["durationMs"] == ms(s["startedAt"], s["finishedAt"]) for s in steps)
    # The supervisor, then the team it chose (a subgraph of the root), then the team's
    # own nodes inside it: the lead and the expert it handed the request to.
    assert (steps[0]["node"], steps[0]["namespace"]) == (SUPERVISOR, "")
    team = steps[1]
    assert team["node"] in TEAMS and team["namespace"] == ""
    inner = steps[2:]
    assert len(inner) >= 2
    assert all(s["namespace"].startswith(f"{team['node']}:") for s in inner)
    assert all(
        team["startedAt"] <= s["startedAt"] <= s["finishedAt"] <= team["finishedAt"] for s in inner
    )
    assert steps[0]["finishedAt"] <= team["startedAt"]

    # Usage: what the offline model reported for each answer it streamed, counted once.
    usage = run["usage"]
    answers = [m for m in run["output"]["messages"] if m["type"] == "ai"]
    assert answers and all(m["usage_metadata"] for m in answers)
    expected_in = sum(m["usage_metadata"]["input_tokens"] for m in answers)
    expected_out = sum(m["usage_metadata"]["output_tokens"] for m in answers)
    assert usage == {
        "inputTokens": expected_in,
        "outputTokens": expected_out,
        "totalTokens": expected_in + expected_out,
    }
    assert usage["inputTokens"] > 0 and usage["outputTokens"] > 0


async def test_a_cancelled_run_closes_the_step_it_was_in(server: Server) -> None:
    started = data(
        await gql(
            server.http,
            START,
            {"input": {"graph": "slow", "message": "hi", "config": {"delay": 0.4}}},
        )
    )["startRun"]
    run_id = started["id"]
    # Steps are stored as they start: wait until `second` is in flight.
    for _ in range(400):
        run = await run_of(server, run_id)
        if [s["node"] for s in run["steps"]] == ["first", "second"]:
            break
        await asyncio.sleep(0.01)
    assert run["steps"][1]["finishedAt"] is None and run["steps"][1]["durationMs"] is None
    assert run["durationMs"] is None  # unfinished
    data(await gql(server.http, "mutation($id: ID!) { cancelRun(id: $id) { id } }", {"id": run_id}))
    for _ in range(400):
        run = await run_of(server, run_id)
        if run["status"] == "CANCELLED":
            break
        await asyncio.sleep(0.01)
    assert run["status"] == "CANCELLED"
    first, second = run["steps"]
    assert (first["node"], first["error"]) == ("first", None)
    assert first["durationMs"] == ms(first["startedAt"], first["finishedAt"])
    # The step in flight ends when the cancel is recorded, and says why.
    assert second["node"] == "second" and second["error"] == CANCELLED
    assert second["finishedAt"] is not None and second["finishedAt"] <= run["finishedAt"]
    assert run["usage"] == {"inputTokens": 0, "outputTokens": 0, "totalTokens": 0}
    assert run["durationMs"] == ms(run["startedAt"], run["finishedAt"])


def test_a_resumed_run_marks_the_steps_its_lost_executor_left_open() -> None:
    from datetime import UTC

    at = datetime(2025, 1, 1, tzinfo=UTC)
    record = RunRecord(
        run_id="r",
        thread_id="t",
        graph="g",
        status="RUNNING",  # type: ignore[arg-type]
        input_tokens=3,
        output_tokens=4,
        steps=(StepRecord("a", "", at, at), StepRecord("b", "", at)),
    )
    timeline = Timeline(record)
    assert [s.error for s in timeline.steps] == [None, ABANDONED]
    assert timeline.steps[1].finished_at is None  # its end is not known
    assert (timeline.input_tokens, timeline.output_tokens) == (3, 4)  # counting goes on
