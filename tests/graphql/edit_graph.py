"""A user graph for the state-edit tests: a reducer channel, a plain one, and a question
asked inside a subgraph.

`draft` answers with every message it saw (so a test can tell which state a run
started from), `approval` is a subgraph whose `ask` node interrupts when the
state says `ask`, `publish` ends the chain. `draft` and `publish`
append to `notes`.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import interrupt


class EditState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    notes: Annotated[list[str], operator.add]
    title: str
    ask: bool
    answer: str


class ApprovalState(TypedDict, total=False):
    """The subgraph's own state: no reducer channel shared with the parent (a subgraph
    returns its whole state, which a shared reducer would append a second time)."""

    title: str
    ask: bool
    answer: str


def draft(state: EditState) -> dict[str, Any]:
    seen = " | ".join(str(m.content) for m in state.get("messages", []))
    return {"notes": ["draft"], "messages": [AIMessage(content=f"saw: {seen}")]}


def ask(state: ApprovalState) -> dict[str, Any]:
    if not state.get("ask"):
        return {"answer": "none"}
    return {"answer": interrupt({"question": "publish?", "title": state.get("title")})}


def publish(state: EditState) -> dict[str, Any]:
    return {"notes": [f"published:{state.get('answer')}"]}


_approval = StateGraph(ApprovalState)
_approval.add_node("ask", ask)
_approval.add_edge(START, "ask")
_approval.add_edge("ask", END)

graph: StateGraph[Any] = StateGraph(EditState)
graph.add_node("draft", draft)
graph.add_node("approval", _approval.compile())
graph.add_node("publish", publish)
graph.add_edge(START, "draft")
graph.add_edge("draft", "approval")
graph.add_edge("approval", "publish")
graph.add_edge("publish", END)
