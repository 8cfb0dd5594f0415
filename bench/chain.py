"""The 4-node chain the benchmarks run; `graph` is what `bench/peer.py` serves to both servers.

Imports only LangGraph, so that LangGraph's own server (another virtualenv) loads it too.
"""

from __future__ import annotations

import operator
from itertools import pairwise
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph


class SmallState(TypedDict, total=False):
    steps: Annotated[list[str], operator.add]
    text: str


def small_graph(nodes: int = 4) -> StateGraph[Any]:
    """A chain of `nodes` nodes, each appending its name: the graph the targets name."""
    builder = StateGraph(SmallState)
    names = [f"n{i}" for i in range(nodes)]
    for name in names:

        async def node(state: SmallState, _name: str = name) -> dict[str, Any]:
            return {"steps": [_name], "text": f"{_name} done"}

        builder.add_node(name, node)
    builder.add_edge(START, names[0])
    for a, b in pairwise(names):
        builder.add_edge(a, b)
    builder.add_edge(names[-1], END)
    return builder


graph = small_graph().compile()
