"""A user graph for the run tests: N steps, each sleeping, each recorded once.

Loaded by path (`name=./tests/runs/slow_graph.py:graph`) like any user graph.
Every completed step appends its name to `steps`; with the delay in the input
(`{"delay": 0.2}`) a run takes long enough to cancel, interrupt or kill.
"""

from __future__ import annotations

import asyncio
import operator
from itertools import pairwise
from typing import Annotated, Any

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from typing_extensions import TypedDict


class SlowState(TypedDict, total=False):
    steps: Annotated[list[str], operator.add]
    delay: float
    fail_at: str
    ask_at: str
    answers: Annotated[list[Any], operator.add]
    number: str  # given in the input: every step's update carries it as a float
    value: float


STEPS = [f"s{i}" for i in range(6)]


def _step(name: str) -> Any:
    async def node(state: SlowState) -> dict[str, Any]:
        await asyncio.sleep(state.get("delay", 0.0))
        if state.get("fail_at") == name:
            raise RuntimeError(f"step {name} failed on purpose")
        update: dict[str, Any] = {"steps": [name]}
        if "number" in state:
            update["value"] = float(state["number"])
        if state.get("ask_at") == name:
            update["answers"] = [interrupt({"question": f"continue after {name}?"})]
        return update

    return node


def build() -> StateGraph[Any]:
    builder = StateGraph(SlowState)
    for name in STEPS:
        builder.add_node(name, _step(name))
    builder.add_edge(START, STEPS[0])
    for a, b in pairwise(STEPS):
        builder.add_edge(a, b)
    builder.add_edge(STEPS[-1], END)
    return builder


graph = build()
