"""The `code_hero` graph end to end, on an in-memory checkpointer, fully offline."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from code_hero.agents import build_code_hero_graph

BROKEN_SNIPPET = "Please review this:\n```python\ndef total(items:\n    return sum(items)\n```"


def _graph(model: BaseChatModel | None = None) -> CompiledStateGraph[Any, Any, Any, Any]:
    return build_code_hero_graph(model).compile(checkpointer=InMemorySaver())


def _config(**configurable: Any) -> RunnableConfig:
    return {"configurable": {"thread_id": uuid.uuid4().hex, **configurable}}


def _ask(text: str) -> dict[str, Any]:
    return {"messages": [("user", text)]}


def _hops(state: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["from"], t["to"]) for t in state["transitions"]]


async def test_fastapi_request_ends_at_the_fastapi_expert() -> None:
    result = await _graph().ainvoke(_ask("Help me build a FastAPI application"), _config())
    assert _hops(result) == [("SUPERVISOR", "IMPLEMENTATION"), ("IMPLEMENTATION", "FASTAPI_EXPERT")]
    assert all("FastAPI" in t["reason"] for t in result["transitions"])
    final = result["messages"][-1]
    assert isinstance(final, AIMessage)
    assert final.name == "FASTAPI_EXPERT"
    assert "from fastapi import FastAPI" in final.text
    assert result["route"]["expert"] == "FASTAPI_EXPERT"
    assert set(result["timings"]) == {"SUPERVISOR", "IMPLEMENTATION", "FASTAPI_EXPERT"}
    assert all(seconds >= 0 for seconds in result["timings"].values())
    assert result.get("errors", []) == []


async def test_documentation_request_reaches_the_documentation_team() -> None:
    result = await _graph().ainvoke(_ask("Write a README for my CLI tool"), _config())
    assert _hops(result) == [("SUPERVISOR", "DOCUMENTATION")]
    assert result["route"]["team"] == "documentation"
    assert result["messages"][-1].name == "DOCUMENTATION"
    assert "# Write a README for my CLI tool" in result["messages"][-1].text


async def test_documentation_lead_hands_prompt_work_to_the_prompt_engineer() -> None:
    result = await _graph().ainvoke(_ask("Write a prompt for a docs bot"), _config())
    assert _hops(result) == [("SUPERVISOR", "DOCUMENTATION"), ("DOCUMENTATION", "PROMPT_ENGINEER")]


async def test_stream_shows_tokens_transitions_and_subgraph_updates() -> None:
    graph = _graph()
    tokens: list[tuple[tuple[str, ...], str]] = []
    token_nodes: set[str] = set()
    custom: list[dict[str, Any]] = []
    update_namespaces: set[tuple[str, ...]] = set()
    parts: Any = graph.astream(
        _ask("Help me build a FastAPI application"),
        _config(),
        stream_mode=["messages", "custom", "updates"],
        subgraphs=True,
    )
    async for namespace, mode, data in parts:
        if mode == "messages":
            chunk, metadata = data
            if chunk.content:
                tokens.append((namespace, str(chunk.content)))
                token_nodes.add(metadata["langgraph_node"])
        elif mode == "custom":
            custom.append(data)
        else:
            update_namespaces.add(namespace)
    streamed = [piece for _, piece in tokens]
    assert len(streamed) > 10
    assert "".join(streamed).startswith("FASTAPI_EXPERT:")
    assert tokens[0][0][0].startswith("development:")
    assert token_nodes == {"FASTAPI_EXPERT"}
    assert [(e["from"], e["to"]) for e in custom if e["type"] == "agent_transition"] == [
        ("SUPERVISOR", "IMPLEMENTATION"),
        ("IMPLEMENTATION", "FASTAPI_EXPERT"),
    ]
    assert () in update_namespaces
    assert any(ns and ns[0].startswith("development:") for ns in update_namespaces)


async def test_team_checkpoints_live_in_a_team_namespace() -> None:
    saver, config = InMemorySaver(), _config()
    graph = build_code_hero_graph().compile(checkpointer=saver)
    await graph.ainvoke(_ask("How do interrupts work in LangGraph?"), config)
    namespaces = {c.config["configurable"]["checkpoint_ns"] async for c in saver.alist(None)}
    assert "" in namespaces
    assert any(ns.startswith("research:") for ns in namespaces)


async def test_reviewer_compiles_the_quoted_code_and_records_the_tool_call() -> None:
    graph, config = _graph(), _config()
    custom: list[dict[str, Any]] = []
    parts: Any = graph.astream(_ask(BROKEN_SNIPPET), config, stream_mode="custom", subgraphs=True)
    async for _, data in parts:
        custom.append(data)
    state = (await graph.aget_state(config)).values
    [call] = state["tool_calls"]
    assert (call["agent"], call["tool"]) == ("CODE_REVIEWER", "check_python")
    assert call["args"]["code"].startswith("def total(items:")
    assert call["result"]["ok"] is False
    assert call["result"]["errors"][0]["line"] == 1
    assert any(e["type"] == "tool_call" and e["tool"] == "check_python" for e in custom)
    answer = state["messages"][-1].text
    assert "check_python on snippet 1: line 1" in answer


async def test_standards_enforcer_runs_the_style_check() -> None:
    request = "Check our coding standards:\n```python\ndef undocumented():\n    pass\n```"
    result = await _graph().ainvoke(_ask(request), _config())
    [call] = result["tool_calls"]
    assert call["tool"] == "style_check"
    assert [issue["rule"] for issue in call["result"]["issues"]] == ["docstring"]
    assert "has no docstring" in result["messages"][-1].text


async def test_code_generator_checks_that_its_own_code_compiles() -> None:
    result = await _graph().ainvoke(_ask("Write a Python function that dedupes names"), _config())
    assert result["messages"][-1].name == "CODE_GENERATOR"
    [call] = result["tool_calls"]
    assert (call["agent"], call["tool"], call["result"]["ok"]) == (
        "CODE_GENERATOR",
        "check_python",
        True,
    )


async def test_approval_interrupts_and_resumes_when_approved() -> None:
    graph, config = _graph(), _config(require_approval=True)
    paused = await graph.ainvoke(_ask("Help me build a FastAPI application"), config)
    [interrupt] = paused["__interrupt__"]
    assert interrupt.value["type"] == "approval_request"
    assert interrupt.value["plan"]["expert"] == "FASTAPI_EXPERT"
    assert not paused.get("transitions")
    result = await graph.ainvoke(
        Command(resume={"approved": True, "feedback": "use async"}), config
    )
    assert "__interrupt__" not in result
    assert _hops(result) == [("SUPERVISOR", "IMPLEMENTATION"), ("IMPLEMENTATION", "FASTAPI_EXPERT")]
    [feedback] = result["human_feedback"]
    assert (feedback["approved"], feedback["feedback"]) == (True, "use async")
    assert "use async" in result["messages"][-1].text


async def test_approval_can_be_required_by_the_state_flag() -> None:
    graph, config = _graph(), _config()
    paused = await graph.ainvoke({**_ask("Explain CrewAI"), "require_approval": True}, config)
    assert "__interrupt__" in paused
    result = await graph.ainvoke(Command(resume="yes, go ahead"), config)
    assert result["messages"][-1].name == "CREWAI_EXPERT"
    assert result["human_feedback"][0]["feedback"] == "yes, go ahead"


@pytest.mark.parametrize(
    "answer", [{"approved": False, "feedback": "too costly"}, "no: too costly"]
)
async def test_rejection_ends_the_run_without_handing_off(answer: Any) -> None:
    graph, config = _graph(), _config(require_approval=True)
    await graph.ainvoke(_ask("Help me build a FastAPI application"), config)
    result = await graph.ainvoke(Command(resume=answer), config)
    assert result.get("transitions", []) == []
    assert result["human_feedback"][0]["approved"] is False
    final = result["messages"][-1]
    assert final.name == "SUPERVISOR"
    assert "not approved" in final.text
    assert "too costly" in final.text
    assert (await graph.aget_state(config)).next == ()


async def test_second_turn_appends_records_without_duplicates() -> None:
    graph, config = _graph(), _config()
    await graph.ainvoke(_ask("Help me build a FastAPI application"), config)
    result = await graph.ainvoke(_ask("Help me build a FastAPI application"), config)
    assert len(result["transitions"]) == 4
    assert len({t["id"] for t in result["transitions"]}) == 4
    assert [m.type for m in result["messages"]] == ["human", "ai", "human", "ai"]


class FailingChatModel(BaseChatModel):
    """A chat model whose provider is down."""

    @property
    def _llm_type(self) -> str:
        return "failing"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        raise ConnectionError("provider unreachable")

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        raise ConnectionError("provider unreachable")


async def test_model_failure_is_recorded_and_answered() -> None:
    result = await _graph(FailingChatModel()).ainvoke(_ask("Explain LlamaIndex"), _config())
    [error] = result["errors"]
    assert (error["agent"], error["error_type"]) == ("LLAMAINDEX_EXPERT", "ConnectionError")
    assert "provider unreachable" in error["message"]
    assert "could not answer" in result["messages"][-1].text
