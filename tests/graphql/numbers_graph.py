"""A graph that says which Python type each number it was given has, as it sees it.

`look` records the type of the state's `value`, of its interrupt's answer (when the
state says `ask`), and of `x` in its config and its metadata: a float the stack made an
int on the way (PostgreSQL's jsonb keeps 1e23 as the integer 10**23) shows as `int`.
"""

from __future__ import annotations

from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt


class NumbersState(TypedDict, total=False):
    value: Any
    list: Any
    ask: bool
    answer: Any
    kinds: dict[str, str]


def _kind(value: Any) -> str:
    return type(value).__name__


def look(state: NumbersState, config: RunnableConfig) -> dict[str, Any]:
    answer = interrupt("a number?") if state.get("ask") else None
    return {
        "answer": answer,
        "kinds": {
            "value": _kind(state.get("value")),
            "answer": _kind(answer),
            "config": _kind(config.get("configurable", {}).get("x")),
            "metadata": _kind(config.get("metadata", {}).get("x")),
        },
    }


graph: StateGraph[Any] = StateGraph(NumbersState)
graph.add_node("look", look)
graph.add_edge(START, "look")
graph.add_edge("look", END)
