"""A graph whose one node raises an error whose text holds a NUL (U+0000)."""

from typing import TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict, total=False):
    text: str


def bad(state: State) -> dict[str, str]:
    raise ValueError("zero\x00byte")


builder = StateGraph(State)
builder.add_node("bad", bad)
builder.add_edge(START, "bad")
builder.add_edge("bad", END)
graph = builder
