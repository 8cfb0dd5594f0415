"""A small graph whose nodes take a while: for cancelling and disconnecting mid-run.

Each of the three nodes sleeps `configurable.delay` seconds (default 0.3),
then appends its name to `steps`.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages


class SlowState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    steps: Annotated[list[str], operator.add]


def _node(name: str) -> Any:
    async def node(state: SlowState, config: RunnableConfig) -> dict[str, Any]:
        await asyncio.sleep(float(config.get("configurable", {}).get("delay", 0.3)))
        return {"steps": [name]}

    return node


graph: StateGraph[Any] = StateGraph(SlowState)
for _name in ("first", "second", "third"):
    graph.add_node(_name, _node(_name))
graph.add_edge(START, "first")
graph.add_edge("first", "second")
graph.add_edge("second", "third")
graph.add_edge("third", END)
