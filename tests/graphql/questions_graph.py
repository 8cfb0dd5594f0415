"""A graph that asks two questions at once: `a` and `b` run in the same step and each
interrupts, so a resume must say which answer is whose (a map of interrupt ids).

Each appends its answer to `answers`, tagged with its name.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt


class QuestionsState(TypedDict, total=False):
    answers: Annotated[list[str], operator.add]


def _asker(name: str) -> Any:
    def node(state: QuestionsState) -> dict[str, Any]:
        return {"answers": [f"{name}:{interrupt(f'{name}?')}"]}

    return node


graph: StateGraph[Any] = StateGraph(QuestionsState)
for _name in ("a", "b"):
    graph.add_node(_name, _asker(_name))
    graph.add_edge(START, _name)
    graph.add_edge(_name, END)
