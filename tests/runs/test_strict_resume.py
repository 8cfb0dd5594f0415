"""A resume is checked again when its run starts (LangGraph's strict resume): an answer
that passed the request's check but no longer matches what the thread waits for (a
resume of the thread that got in first answered it) runs nothing, ends ERROR saying
why, and leaves the thread INTERRUPTED with its questions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.errors import BadInputError, ConflictError, NotFoundError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import MultitaskStrategy, RunStatus, ThreadStatus
from code_hero.runs import executor as executor_module
from code_hero.runs.executor import StartRun
from code_hero.runs.interrupts import pending_interrupts
from code_hero.runs.requests import UpdateState

QUESTIONS = f"{Path(__file__).parents[1] / 'graphql' / 'questions_graph.py'}:graph"


@pytest.fixture
async def gateway(backend_config: CheckpointerConfig) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(checkpointer=backend_config, graphs={"questions": QUESTIONS})
    async with Gateway(settings) as gw:
        yield gw


async def pending(gw: Gateway, thread_id: str) -> dict[str, str]:
    """{node: interrupt id} of what the thread waits for."""
    thread = await gw.manager.registry.get_thread(thread_id)
    assert thread is not None
    found = await pending_interrupts(gw.manager.registry, gw.graph_registry, [thread])
    return {p.node: p.interrupt_id for p in found.get(thread_id, [])}


async def resume(gw: Gateway, thread_id: str, answer: object) -> RunStatus:
    run = await gw.start_run(
        StartRun(
            thread_id=thread_id,
            resume=answer,
            wait=True,
            multitask=MultitaskStrategy.ENQUEUE,
        )
    )
    return run.status


async def test_an_answer_already_given_is_refused_at_the_request_and_at_the_start(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = gateway
    asked = await gw.start_run(StartRun(graph="questions", input={}, wait=True))
    assert asked.status is RunStatus.INTERRUPTED
    thread_id = asked.thread_id
    ids = await pending(gw, thread_id)
    assert set(ids) == {"a", "b"}

    # `a` answered alone: `b` still waits.
    assert await resume(gw, thread_id, {ids["a"]: "A"}) is RunStatus.INTERRUPTED
    assert await pending(gw, thread_id) == {"b": ids["b"]}

    # The same answer again is refused by the request's check, naming what waits...
    with pytest.raises(BadInputError, match=ids["a"]) as refused:
        await resume(gw, thread_id, {ids["a"]: "again"})
    assert ids["b"] in str(refused.value)
    # ...and, had it passed that check (a resume racing the first), by the run's start.
    monkeypatch.setattr(executor_module, "check_answer", lambda resume, pending: None)
    run = await gw.start_run(StartRun(thread_id=thread_id, resume={ids["a"]: "again"}, wait=True))
    assert run.status is RunStatus.ERROR
    assert run.error is not None
    assert "refused, nothing was run" in run.error and ids["a"] in run.error
    assert ids["b"] in run.error
    thread = await gw.manager.registry.get_thread(thread_id)
    assert thread is not None and thread.status is ThreadStatus.INTERRUPTED
    assert await pending(gw, thread_id) == {"b": ids["b"]}
    # One plain answer for two questions, the same way.
    run = await gw.start_run(StartRun(thread_id=thread_id, resume={}, wait=True))
    assert run.status is RunStatus.ERROR and "empty map" in (run.error or "")
    monkeypatch.undo()

    # The proper answer goes on from where it stopped: `a` answered once.
    assert await resume(gw, thread_id, {ids["b"]: "B"}) is RunStatus.SUCCESS
    state = await gw.graph_registry.get("questions").aget_state(
        {"configurable": {"thread_id": thread_id}}
    )
    assert sorted(state.values["answers"]) == ["a:A", "b:B"]
    thread = await gw.manager.registry.get_thread(thread_id)
    assert thread is not None and thread.status is ThreadStatus.IDLE


async def test_a_map_that_names_no_pending_question_is_refused_with_one_pending(
    gateway: Gateway,
) -> None:
    """With one question pending a plain object is an answer, but an object of interrupt
    ids is a map for LangGraph: one naming another id (or none) would be dropped."""
    gw = gateway
    asked = await gw.start_run(StartRun(graph="questions", input={}, wait=True))
    ids = await pending(gw, asked.thread_id)
    assert await resume(gw, asked.thread_id, {ids["a"]: "A"}) is RunStatus.INTERRUPTED
    for answer in ({"0" * 32: "x"}, {}):
        with pytest.raises(BadInputError, match="interrupt"):
            await resume(gw, asked.thread_id, answer)
    # A plain object whose keys are not interrupt ids answers the one question.
    assert await resume(gw, asked.thread_id, {"approved": True}) is RunStatus.SUCCESS
    state = await gw.graph_registry.get("questions").aget_state(
        {"configurable": {"thread_id": asked.thread_id}}
    )
    assert sorted(state.values["answers"]) == ["a:A", "b:{'approved': True}"]


async def test_racing_resumes_answer_once_and_the_others_are_refused(
    gateway: Gateway,
) -> None:
    """Resumes racing on one thread, whatever their multitask: one is admitted, the
    others are CONFLICT (the thread busy) and start nothing. With INTERRUPT, the later
    one cancelled the first mid-answer and was then refused by strict resume: the
    thread ended ERROR with its questions lost (found by an outside audit)."""
    gw = gateway
    asked = await gw.start_run(StartRun(graph="questions", input={}, wait=True))
    thread_id = asked.thread_id
    ids = await pending(gw, thread_id)
    answer = {ids["a"]: "A", ids["b"]: "B"}
    results = await asyncio.gather(
        *(
            gw.start_run(
                StartRun(thread_id=thread_id, resume=answer, wait=True, multitask=multitask)
            )
            for multitask in (
                MultitaskStrategy.INTERRUPT,
                MultitaskStrategy.INTERRUPT,
                MultitaskStrategy.ENQUEUE,
            )
        ),
        return_exceptions=True,
    )
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert [r.status for r in done] == [RunStatus.SUCCESS], results
    assert all(isinstance(r, ConflictError) for r in refused), refused
    state = await gw.graph_registry.get("questions").aget_state(
        {"configurable": {"thread_id": thread_id}}
    )
    assert sorted(state.values["answers"]) == ["a:A", "b:B"]
    runs = await gw.manager.registry.unfinished_runs(thread_id)
    assert runs == []


async def test_a_fork_answers_what_waits_at_its_checkpoint_whatever_the_thread_did_since(
    gateway: Gateway,
) -> None:
    """With fromCheckpointId the questions pending at that checkpoint count (README),
    the thread's status not: it was CONFLICT ("not interrupted") once the thread had
    been answered or run again (found by an outside audit)."""
    gw = gateway
    graph = gw.graph_registry.get("questions")
    asked = await gw.start_run(StartRun(graph="questions", input={}, wait=True))
    thread_id = asked.thread_id
    ids = await pending(gw, thread_id)
    at = (await graph.aget_state({"configurable": {"thread_id": thread_id}})).config
    asked_at = at["configurable"]["checkpoint_id"]
    # An edit drops the questions (LangGraph): the thread is IDLE, its questions still
    # wait at the checkpoint they were asked at.
    await gw.update_state(UpdateState(thread_id=thread_id, values={"answers": ["edited"]}))
    thread = await gw.manager.registry.get_thread(thread_id)
    assert thread is not None and thread.status is ThreadStatus.IDLE

    forked = await gw.start_run(
        StartRun(
            thread_id=thread_id,
            resume={ids["a"]: "A2", ids["b"]: "B2"},
            from_checkpoint_id=asked_at,
            wait=True,
        )
    )
    assert forked.status is RunStatus.SUCCESS, forked.error
    state = await graph.aget_state({"configurable": {"thread_id": thread_id}})
    assert sorted(state.values["answers"]) == ["a:A2", "b:B2"]  # not the edited branch
    # Answered at that checkpoint now (LangGraph keeps the answers' writes there and
    # would reuse them, whatever a new answer says): a second fork there is refused.
    with pytest.raises(ConflictError, match="waits for no answer"):
        await gw.start_run(StartRun(thread_id=thread_id, resume="yes", from_checkpoint_id=asked_at))
    # A checkpoint that waits for nothing, or none at all: nothing to resume there.
    latest = state.config["configurable"]["checkpoint_id"]
    with pytest.raises(ConflictError, match="waits for no answer"):
        await gw.start_run(StartRun(thread_id=thread_id, resume="yes", from_checkpoint_id=latest))
    with pytest.raises(NotFoundError, match="not in thread"):
        await gw.start_run(
            StartRun(thread_id=thread_id, resume="yes", from_checkpoint_id="1f0-nope")
        )


async def test_a_resume_on_a_busy_thread_says_it_is_busy(gateway: Gateway) -> None:
    """A resume on a thread busy with a run (another resume got in first) is CONFLICT
    saying so, not "not interrupted" (an outside audit found the message misleading)."""
    gw = gateway
    asked = await gw.start_run(StartRun(graph="questions", input={}, wait=True))
    registry = gw.manager.registry
    thread = await registry.get_thread(asked.thread_id)
    assert thread is not None
    await registry.put_thread(replace(thread, status=ThreadStatus.BUSY))  # a run in flight
    with pytest.raises(ConflictError, match="is busy with a run"):
        await gw.start_run(StartRun(thread_id=asked.thread_id, resume="yes"))
