from typing import TypedDict
from langgraph.graph import StateGraph, START, END
class S(TypedDict, total=False):
    text: str
def bad(state: S) -> dict:
    return {"text": "zero\x00byte"}
b = StateGraph(S); b.add_node("bad", bad); b.add_edge(START, "bad"); b.add_edge("bad", END)
graph = b
