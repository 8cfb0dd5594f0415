"""A graph whose one node does something outside (counted in a file) and returns a
value the database is slow to store (a test trigger sleeps on it): every write of it
runs into the database's statement_timeout, each time alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict, total=False):
    folder: str
    payload: str


def pay(state: State) -> dict[str, Any]:
    with open(Path(state["folder"]) / "side-effects", "a") as file:
        file.write("x")
    return {"payload": "slowmarker"}


builder: StateGraph[Any] = StateGraph(State)
builder.add_node("pay", pay)
builder.add_edge(START, "pay")
builder.add_edge("pay", END)
graph = builder
