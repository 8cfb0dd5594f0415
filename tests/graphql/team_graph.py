"""A chain with a subgraph in the middle: its checkpoints fill a namespace of their own."""

from __future__ import annotations

from typing import Any

from langgraph.graph import StateGraph

from tests.graphs import build_graph

graph: StateGraph[Any] = build_graph(with_subgraph=True)
