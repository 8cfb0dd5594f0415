"""Small real LangGraph graphs the persistence and run tests drive."""

from __future__ import annotations

import asyncio
import operator
import time
from itertools import pairwise
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langchain_core.runnables import RunnableLambda
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages


class CounterState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    steps: Annotated[list[str], operator.add]
    blob: bytes
    delay: float


def _update(name: str, state: CounterState) -> dict[str, Any]:
    msg_id = f"msg-{name}-{len(state.get('steps', []))}"
    return {"steps": [name], "messages": [AIMessage(content=f"{name} done", id=msg_id)]}


def _step(name: str) -> Any:
    """A node with both a sync and an async body (graphs run via invoke or ainvoke)."""

    def sync_node(state: CounterState) -> dict[str, Any]:
        if state.get("delay"):
            time.sleep(state["delay"])
        return _update(name, state)

    async def async_node(state: CounterState) -> dict[str, Any]:
        if state.get("delay"):
            await asyncio.sleep(state["delay"])
        return _update(name, state)

    return RunnableLambda(sync_node, afunc=async_node, name=name)


def build_subgraph() -> Any:
    sub = StateGraph(CounterState)
    sub.add_node("inner_a", _step("inner_a"))
    sub.add_node("inner_b", _step("inner_b"))
    sub.add_edge(START, "inner_a")
    sub.add_edge("inner_a", "inner_b")
    sub.add_edge("inner_b", END)
    return sub.compile()


def build_graph(*, nodes: int = 3, with_subgraph: bool = False) -> StateGraph[Any]:
    """A chain of `nodes` nodes (optionally a subgraph in the middle) appending to `steps`."""
    builder = StateGraph(CounterState)
    names = [f"n{i}" for i in range(nodes)]
    for name in names:
        builder.add_node(name, _step(name))
    chain = list(names)
    if with_subgraph:
        builder.add_node("team", build_subgraph())
        chain.insert(1, "team")
    builder.add_edge(START, chain[0])
    for a, b in pairwise(chain):
        builder.add_edge(a, b)
    builder.add_edge(chain[-1], END)
    return builder
