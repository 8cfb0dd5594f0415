"""A user graph for the run tests: a chain with a two-node subgraph in the middle
(tests/graphs.py's), loaded by path like any user graph."""

from __future__ import annotations

from tests.graphs import build_graph

graph = build_graph(with_subgraph=True)
