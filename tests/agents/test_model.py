"""The offline chat model: deterministic, role-aware, streamed word by word."""

from __future__ import annotations

import pytest
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from code_hero.agents import OfflineChatModel, make_chat_model
from code_hero.agents.catalog import system_prompt
from code_hero.agents.replies import tokenize
from code_hero.agents.tools import check_python, extract_code
from code_hero.errors import ConfigurationError


def _ask(agent: str, request: str) -> list[BaseMessage]:
    return [SystemMessage(system_prompt(agent)), HumanMessage(request)]


async def test_same_input_gives_the_same_output() -> None:
    messages = _ask("CODE_GENERATOR", "Write a function that parses dates")
    first = await OfflineChatModel().ainvoke(messages)
    second = await OfflineChatModel().ainvoke(messages)
    assert first.content == second.content
    assert OfflineChatModel().invoke(messages).content == first.content


async def test_answer_depends_on_the_role_and_the_request() -> None:
    model = OfflineChatModel()
    fastapi = (await model.ainvoke(_ask("FASTAPI_EXPERT", "Build an orders API"))).text
    generator = (await model.ainvoke(_ask("CODE_GENERATOR", "Parse dates from logs"))).text
    other = (await model.ainvoke(_ask("CODE_GENERATOR", "Merge sorted lists"))).text
    assert "from fastapi import FastAPI" in fastapi
    assert "```python" in generator
    assert "def parse_dates_logs(" in generator
    assert generator != other
    assert all(check_python(code)["ok"] for code in extract_code(fastapi + generator))


async def test_astream_yields_word_sized_deltas_that_join_to_the_answer() -> None:
    model = OfflineChatModel()
    messages = _ask("LANGGRAPH_EXPERT", "How do checkpoints work?")
    chunks = [chunk async for chunk in model.astream(messages)]
    pieces = [str(chunk.content) for chunk in chunks if chunk.content]
    assert len(pieces) > 10
    assert all(len(piece.split()) <= 1 for piece in pieces)
    assert "".join(pieces) == (await model.ainvoke(messages)).content


def test_sync_stream_matches_invoke() -> None:
    model = OfflineChatModel()
    messages = _ask("PROMPT_ENGINEER", "A prompt for summaries")
    joined = "".join(str(chunk.content) for chunk in model.stream(messages))
    assert joined == model.invoke(messages).content


def test_without_a_role_it_still_answers() -> None:
    assert "hello" in OfflineChatModel().invoke([HumanMessage("hello")]).text


def test_make_chat_model_defaults_to_offline() -> None:
    assert isinstance(make_chat_model(None), OfflineChatModel)
    assert isinstance(make_chat_model("offline"), OfflineChatModel)


def test_make_chat_model_names_the_package_to_install() -> None:
    try:
        import langchain  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("langchain is installed, so the error path cannot be reached")
    with pytest.raises(ConfigurationError, match="langchain"):
        make_chat_model("openai:gpt-4o-mini")


async def test_usage_is_reported_and_the_chunks_add_up_to_the_whole() -> None:
    model = OfflineChatModel()
    messages = _ask("CODE_GENERATOR", "Write a function that parses dates")
    whole = await model.ainvoke(messages)
    assert whole.usage_metadata is not None
    read = sum(len(tokenize(m.text)) for m in messages)
    said = len(tokenize(str(whole.content)))
    assert whole.usage_metadata == {
        "input_tokens": read,
        "output_tokens": said,
        "total_tokens": read + said,
    }
    chunks = [chunk async for chunk in model.astream(messages)]
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.usage_metadata == whole.usage_metadata
    assert model.invoke(messages).usage_metadata == whole.usage_metadata
