"""A graph whose state, events and output hold NaN and infinities (a model's score,
a division by zero): what a graph produces is its own, and must stay readable."""

from __future__ import annotations

from typing import Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph


class OddState(TypedDict, total=False):
    score: float
    scores: list[float]


def odd(state: OddState) -> dict[str, Any]:
    get_stream_writer()({"ratio": float("-inf")})
    return {"score": float("nan"), "scores": [float("inf"), 1.5]}


graph: StateGraph[Any] = StateGraph(OddState)
graph.add_node("odd", odd)
graph.add_edge(START, "odd")
graph.add_edge("odd", END)
