"""The run executor on memory, SQLite and PostgreSQL: states, cancel, resume, fork, multitask."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Any

import pytest

from code_hero.errors import BadInputError, ConflictError, NotFoundError, RunHeldUpError
from code_hero.gateway import Gateway
from code_hero.persistence.records import RunFilter, RunStatus, ThreadStatus
from code_hero.runs.executor import MultitaskStrategy, StartRun
from tests.graphql.clients import eventually
from tests.runs.conftest import idle_thread


@pytest.fixture
def pg_database(pg_migrated_database: str) -> str:
    """A database of the test's own with the gateway's tables made (its migrations are
    not what these tests are about)."""
    return pg_migrated_database


async def events_of(gw: Gateway, run_id: str) -> list:
    return await gw.run_events(run_id, first=1000)


async def wait_status(gw: Gateway, run_id: str, status: RunStatus, limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        run = await gw.get_run(run_id)
        if run is not None and run.status is status:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never reached {status}")


async def wait_steps(gw: Gateway, thread_id: str, steps: int, limit: float = 10) -> None:
    """Until the thread's latest checkpoint records at least `steps` steps."""
    async with asyncio.timeout(limit):
        while True:
            latest = await gw.get_checkpoint(thread_id)
            if latest is not None and len(latest.values.get("steps", [])) >= steps:
                return
            await asyncio.sleep(0.02)


async def test_builtin_graph_reaches_the_fastapi_expert(gateway: Gateway) -> None:
    run = await gateway.start_run(
        StartRun(message="Help me build a FastAPI application", user_id="ann", wait=True)
    )
    assert run.status is RunStatus.SUCCESS and run.error is None
    events = await events_of(gateway, run.run_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = Counter(e.type for e in events)
    assert kinds["message_delta"] > 5, "the answer streams token by token"
    assert kinds["checkpoint"] >= 4 and kinds["node_update"] >= 3
    hops = [(e.payload["from"], e.payload["to"]) for e in events if e.type == "agent_transition"]
    assert hops == [("SUPERVISOR", "IMPLEMENTATION"), ("IMPLEMENTATION", "FASTAPI_EXPERT")]
    assert [e.payload["status"] for e in events if e.type == "status"] == [
        "PENDING",
        "RUNNING",
        "SUCCESS",
    ]
    assert any(
        e.payload["namespace"].startswith("development:") for e in events if e.type == "node_update"
    )
    answer = run.output["messages"][-1]
    assert answer["type"] == "ai" and "FastAPI" in answer["content"]
    thread = await gateway.get_thread(run.thread_id)
    assert thread is not None and thread.status is ThreadStatus.IDLE and thread.user_id == "ann"


async def test_documentation_request_goes_to_the_documentation_team(gateway: Gateway) -> None:
    run = await gateway.start_run(StartRun(message="Write documentation for my README", wait=True))
    events = await events_of(gateway, run.run_id)
    targets = [e.payload["to"] for e in events if e.type == "agent_transition"]
    assert targets[0] == "DOCUMENTATION"


async def test_error_ends_the_run_and_marks_the_thread(gateway: Gateway) -> None:
    run = await gateway.start_run(StartRun(graph="slow", input={"fail_at": "s2"}, wait=True))
    assert run.status is RunStatus.ERROR and "step s2 failed on purpose" in (run.error or "")
    assert (await gateway.get_thread(run.thread_id)).status is ThreadStatus.ERROR  # type: ignore[union-attr]
    last = (await events_of(gateway, run.run_id))[-1]
    assert last.payload == {"status": "ERROR", "error": run.error}


def _executor_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "code_hero.runs.executor"]


@pytest.mark.parametrize(
    ("graph", "run_input", "told"),
    [
        (None, {"messages": 5}, "NotImplementedError: Unsupported message type"),
        (None, {"messages": [{"role": "nope", "content": "x"}]}, "ValueError: Unexpected"),
        ("slow", {"steps": 5}, "TypeError: "),  # list + int in the state's reducer
    ],
)
async def test_an_input_the_graph_refuses_is_one_warning_not_a_traceback(
    gateway: Gateway,
    caplog: pytest.LogCaptureFixture,
    graph: str | None,
    run_input: dict[str, Any],
    told: str,
) -> None:
    """The caller's input, refused by the graph's state: the run ends ERROR as before,
    and the log says so in one WARNING line, not an ERROR with a traceback."""
    caplog.set_level(logging.WARNING, logger="code_hero.runs.executor")
    run = await gateway.start_run(StartRun(graph=graph, input=run_input, wait=True))
    assert run.status is RunStatus.ERROR and (run.error or "").startswith(told), run.error
    (logged,) = _executor_logs(caplog)
    message = logged.getMessage()
    assert logged.levelno == logging.WARNING and logged.exc_info is None, message
    assert run.run_id in message and told in message and "\n" not in message


@pytest.mark.parametrize("step", ["s0", "s2"])
async def test_a_graph_that_fails_in_a_node_keeps_its_traceback(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, step: str
) -> None:
    # Not the input's fault, and not expected: logged at ERROR with its traceback.
    caplog.set_level(logging.WARNING, logger="code_hero.runs.executor")
    run = await gateway.start_run(StartRun(graph="slow", input={"fail_at": step}, wait=True))
    assert run.status is RunStatus.ERROR
    (logged,) = _executor_logs(caplog)
    assert logged.levelno == logging.ERROR and logged.exc_info is not None
    assert run.run_id in logged.getMessage()


async def test_cancel_is_prompt_and_leaves_checkpoints_consistent(gateway: Gateway) -> None:
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.5}))
    await wait_status(gateway, run.run_id, RunStatus.RUNNING)
    await wait_steps(gateway, run.thread_id, 1)  # cancelled mid-run, not before its first step
    started = time.monotonic()
    cancelled = await gateway.cancel_run(run.run_id)
    assert time.monotonic() - started < 1.0
    assert cancelled.status is RunStatus.CANCELLED
    assert (await gateway.get_thread(run.thread_id)).status is ThreadStatus.IDLE  # type: ignore[union-attr]
    latest = await gateway.get_checkpoint(run.thread_id)
    assert latest is not None and 1 <= len(latest.values["steps"]) < 6
    again = await gateway.start_run(
        StartRun(graph="slow", thread_id=run.thread_id, input={}, wait=True)
    )
    assert again.status is RunStatus.SUCCESS
    assert (await gateway.cancel_run(run.run_id)).status is RunStatus.CANCELLED  # idempotent
    with pytest.raises(NotFoundError):
        await gateway.cancel_run("00000000-0000-4000-8000-000000000000")


async def test_interrupt_and_resume(gateway: Gateway) -> None:
    run = await gateway.start_run(
        StartRun(message="build a fastapi app", config={"require_approval": True}, wait=True)
    )
    assert run.status is RunStatus.INTERRUPTED
    assert (await gateway.get_thread(run.thread_id)).status is ThreadStatus.INTERRUPTED  # type: ignore[union-attr]
    asked = [e for e in await events_of(gateway, run.run_id) if e.type == "interrupt"]
    assert asked[0].payload["node"] == "SUPERVISOR" and "question" in asked[0].payload["value"]
    resumed = await gateway.start_run(
        StartRun(thread_id=run.thread_id, resume={"approved": True, "feedback": "go"}, wait=True)
    )
    assert resumed.status is RunStatus.SUCCESS
    assert resumed.output["human_feedback"][0]["approved"] is True
    with pytest.raises(ConflictError, match="not interrupted"):
        await gateway.start_run(StartRun(thread_id=run.thread_id, resume="yes"))


async def test_interrupt_inside_a_user_graph(gateway: Gateway) -> None:
    run = await gateway.start_run(StartRun(graph="slow", input={"ask_at": "s3"}, wait=True))
    assert run.status is RunStatus.INTERRUPTED
    resumed = await gateway.start_run(
        StartRun(thread_id=run.thread_id, resume="ok", graph="slow", wait=True)
    )
    assert resumed.status is RunStatus.SUCCESS
    assert resumed.output["steps"] == [f"s{i}" for i in range(6)] and resumed.output["answers"] == [
        "ok"
    ]


async def test_fork_from_a_past_checkpoint_keeps_the_old_branch(gateway: Gateway) -> None:
    first = await gateway.start_run(StartRun(graph="slow", input={}, wait=True))
    history = (await gateway.list_checkpoints(first.thread_id, first=100)).items
    after_s1 = next(c for c in history if c.values.get("steps") == ["s0", "s1"])
    fork = await gateway.start_run(
        StartRun(
            graph="slow",
            thread_id=first.thread_id,
            input={"steps": ["forked"]},
            from_checkpoint_id=after_s1.checkpoint_id,
            wait=True,
        )
    )
    assert fork.status is RunStatus.SUCCESS
    assert fork.output["steps"][:3] == ["s0", "s1", "forked"]
    everything = (await gateway.list_checkpoints(first.thread_id, first=100)).items
    children = [c for c in everything if c.parent_id == after_s1.checkpoint_id]
    assert len(children) == 2, "the past checkpoint has a second child; the old branch stays"
    with pytest.raises(NotFoundError, match="not in thread"):
        await gateway.start_run(
            StartRun(graph="slow", thread_id=first.thread_id, input={}, from_checkpoint_id="nope")
        )


async def test_multitask_reject_enqueue_interrupt(gateway: Gateway) -> None:
    slow = {"delay": 0.1}
    first = await gateway.start_run(StartRun(graph="slow", input=slow))
    with pytest.raises(ConflictError, match="busy"):
        await gateway.start_run(StartRun(graph="slow", thread_id=first.thread_id, input=slow))
    queued = [
        await gateway.start_run(
            StartRun(
                graph="slow",
                thread_id=first.thread_id,
                input={},
                multitask=MultitaskStrategy.ENQUEUE,
            )
        )
        for _ in range(2)
    ]
    assert all(r.status is RunStatus.PENDING for r in queued)
    done = [await gateway.executor.wait(r.run_id, limit=30) for r in [first, *queued]]
    assert [r.status for r in done] == [RunStatus.SUCCESS] * 3
    assert done[0].finished_at <= done[1].started_at and done[1].finished_at <= done[2].started_at  # type: ignore[operator]

    running = await gateway.start_run(
        StartRun(graph="slow", thread_id=first.thread_id, input={"delay": 1})
    )
    await wait_status(gateway, running.run_id, RunStatus.RUNNING)
    takeover = await gateway.start_run(
        StartRun(
            graph="slow",
            thread_id=first.thread_id,
            input={"delay": 0},  # not the 1 s per step of the run it interrupts
            multitask=MultitaskStrategy.INTERRUPT,
            wait=True,
        )
    )
    assert (await gateway.get_run(running.run_id)).status is RunStatus.CANCELLED  # type: ignore[union-attr]
    assert takeover.status is RunStatus.SUCCESS


@pytest.mark.parametrize("fresh", [True, False])
async def test_racing_interrupt_starts_leave_the_newest_running(
    gateway: Gateway, fresh: bool
) -> None:
    """Starts with multitask INTERRUPT racing on one thread (a double click, a retry):
    the newest in the thread's queue (created_at, then run id) runs to its end, every
    other one is CANCELLED. Each cancelled every other one: all ended CANCELLED, most
    never ran (found by an outside audit)."""
    thread_id = "racing" if fresh else await idle_thread(gateway)
    starts = [
        gateway.start_run(
            StartRun(
                graph="slow",
                thread_id=thread_id,
                input={"delay": 0.05},
                multitask=MultitaskStrategy.INTERRUPT,
            )
        )
        for _ in range(4)
    ]
    admitted = await asyncio.gather(*starts)
    done = [await gateway.executor.wait(r.run_id, limit=30) for r in admitted]
    newest = max(done, key=lambda r: (r.created_at, r.run_id))
    assert {r.run_id: r.status for r in done} == {
        r.run_id: RunStatus.SUCCESS if r is newest else RunStatus.CANCELLED for r in done
    }
    assert newest.output is not None and len(newest.output["steps"]) >= 6


@pytest.mark.parametrize(
    ("request_", "error", "match"),
    [
        (StartRun(graph="nope", message="hi"), NotFoundError, "unknown graph 'nope'"),
        (StartRun(message="hi", input={"messages": []}), BadInputError, "exactly one"),
        (StartRun(), BadInputError, "exactly one"),
        (StartRun(message="   "), BadInputError, "non-empty"),
        (StartRun(graph="slow", input={"colour": 1}), BadInputError, "does not take colour"),
        (StartRun(graph="slow", input=[1, 2]), BadInputError, "JSON object"),
        (StartRun(graph="slow", message="hi"), BadInputError, "takes no messages"),
        (StartRun(thread_id="fresh", resume="yes"), NotFoundError, "no thread 'fresh'"),
        (
            StartRun(thread_id="fresh", message="hi", from_checkpoint_id="x"),
            NotFoundError,
            "not in thread",
        ),
    ],
)
async def test_bad_input_records_nothing(
    gateway: Gateway, request_: StartRun, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        await gateway.start_run(request_)
    assert (await gateway.runs_page(RunFilter(), first=10)).items == []
    assert (await gateway.threads_page(first=10)).items == []


async def test_thread_subscription_sees_every_run(gateway: Gateway) -> None:
    first = await gateway.start_run(StartRun(graph="slow", input={}, wait=True))
    stream = await gateway.follow_thread(first.thread_id)
    received: list = []

    async def consume() -> None:
        async for event in stream:
            received.append(event)

    consumer = asyncio.create_task(consume())
    await eventually(lambda: gateway.bus.subscriber_count == 1)  # following before the runs
    runs = [
        await gateway.start_run(
            StartRun(graph="slow", thread_id=first.thread_id, input={}, wait=True)
        )
        for _ in range(2)
    ]
    stored = {run.run_id: [e.seq for e in await events_of(gateway, run.run_id)] for run in runs}
    ends = {(run_id, seqs[-1]) for run_id, seqs in stored.items()}
    await eventually(lambda: ends <= {(e.run_id, e.seq) for e in received})  # both runs' last
    consumer.cancel()
    for run_id, seqs in stored.items():
        assert [e.seq for e in received if e.run_id == run_id] == seqs


async def test_a_thread_created_by_a_run_carries_its_metadata(gateway: Gateway) -> None:
    from code_hero.persistence.records import ThreadFilter

    run = await gateway.start_run(
        StartRun(graph="slow", input={}, metadata={"project": "shop"}, user_id="ann", wait=True)
    )
    thread = await gateway.get_thread(run.thread_id)
    assert thread is not None and thread.metadata == {"graph": "slow", "project": "shop"}
    found = await gateway.threads_page(ThreadFilter(user_id="ann", metadata={"project": "shop"}))
    assert [t.thread_id for t in found.items] == [run.thread_id]
    again = await gateway.start_run(
        StartRun(
            graph="slow",
            thread_id=run.thread_id,
            input={},
            metadata={"project": "other"},
            wait=True,
        )
    )
    assert again.metadata == {"project": "other"}
    kept = await gateway.get_thread(run.thread_id)
    assert kept is not None and kept.metadata["project"] == "shop", "later runs leave it alone"


async def test_a_waiter_looks_at_the_registry_only_when_the_run_is_not_claimed_here(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """startRun(wait) on a run the next claim pass here takes: woken by its launch and its
    end, never asking the registry (the pass outlasting a pause of its own included);
    a run that pass leaves (no free slot) is looked at once the pass has ended."""
    registry = gateway.manager.registry
    looks: list[str] = []
    real_get, real_claim = registry.get_run, registry.claim_runs

    async def get_run(run_id: str) -> object:
        looks.append(run_id)
        return await real_get(run_id)

    async def slow_claim(owner: str, **kwargs: object) -> object:
        await asyncio.sleep(0.05)  # a pass on a busy event loop
        return await real_claim(owner, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "get_run", get_run)
    monkeypatch.setattr(registry, "claim_runs", slow_claim)
    # The waiter's look at the latest after 0.25 s (no pass ended: a busy pool) is not
    # what this asks about, and a pass on a loaded machine outlasts it (CI, -n 2): the
    # news of the pass alone wakes the waiter here.
    monkeypatch.setattr("code_hero.runs.executor._FIRST_LOOK_AT_THE_LATEST", 3600)
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0.01}, wait=True))
    assert run.status is RunStatus.SUCCESS
    assert looks == []

    claims = gateway.executor.claims
    slots, claims.max_concurrent = claims.max_concurrent, 0  # the pass claims nothing
    waiting = asyncio.create_task(
        gateway.start_run(StartRun(graph="slow", input={"delay": 0.01}, wait=True))
    )
    await eventually(lambda: bool(looks))  # looked at, the pass having left it
    claims.max_concurrent = slots
    claims.wake()
    second = await asyncio.wait_for(waiting, 30)
    assert second.status is RunStatus.SUCCESS and looks[0] == second.run_id


async def test_once_claiming_stops_no_caller_waits_for_a_pass(gateway: Gateway) -> None:
    """A caller waiting for the next claim pass is told when claiming stops (no pass comes
    any more) and one asking afterwards at once: none is kept for a pass that never ends."""
    claims = gateway.executor.claims
    told: list[str] = []
    claims.after_next_pass(lambda: told.append("before"))
    claims.stop_claiming()
    assert told == ["before"]
    claims.after_next_pass(lambda: told.append("after"))
    assert told == ["before", "after"]
    assert claims._after_pass == []


async def test_stop_waiting_answers_waiting_starts_and_leaves_their_runs_going(
    gateway: Gateway,
) -> None:
    """Once the server begins to stop, a `startRun(wait)` is answered at once, UNAVAILABLE
    naming its run (uvicorn held the stop until the run's end); the run goes on, for the
    shutdown to drain or hand on. A start waiting from then on is answered at once too,
    its run recorded."""
    waiting = asyncio.create_task(
        gateway.start_run(StartRun(graph="slow", input={"delay": 0.5}, wait=True))
    )
    running: list[Any] = []
    while not running:
        await asyncio.sleep(0.01)
        running = (await gateway.runs_page(RunFilter(status=RunStatus.RUNNING))).items
    gateway.stop_waiting()
    with pytest.raises(RunHeldUpError) as told:
        await waiting
    assert told.value.code == "UNAVAILABLE" and "stopping" in str(told.value)
    assert told.value.extensions == {"retryAfter": 10, "runId": running[0].run_id}
    with pytest.raises(RunHeldUpError) as later:
        await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
    queued = await gateway.get_run(str(later.value.run_id))
    assert queued is not None and not queued.status.finished
    ran = await gateway.executor.wait(running[0].run_id, limit=30)  # unaffected
    assert ran.status is RunStatus.SUCCESS


async def test_a_run_on_a_thread_made_for_it_starts_without_a_checkpoint_read(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first execution of a run whose admission made its thread asks no backend for
    the thread's latest checkpoint (nothing can be there: a round trip on PostgreSQL);
    a later run on that thread reads it and goes on from it."""
    router = gateway.manager.router
    reads: list[str] = []
    real = router.read_tuple

    async def read_tuple(config: Any) -> Any:
        reads.append(config["configurable"]["thread_id"])
        return await real(config)

    monkeypatch.setattr(router, "read_tuple", read_tuple)
    run = await gateway.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
    assert run.status is RunStatus.SUCCESS
    assert reads == []

    again = await gateway.start_run(
        StartRun(graph="slow", input={"delay": 0}, thread_id=run.thread_id, wait=True)
    )
    assert again.status is RunStatus.SUCCESS
    assert run.thread_id in reads, "a thread that was there is read"
    latest = await real({"configurable": {"thread_id": run.thread_id, "checkpoint_ns": ""}})
    assert latest is not None
    steps = latest.checkpoint["channel_values"]["steps"]
    assert len(steps) == 12, "the second run went on from the first's checkpoint"
