"""A graph whose one node does something outside (counted in a file) and then meets a
lock in a SQLite database of its own, not the gateway's: "database is locked", with
the codes a lock of the gateway's store has. Both files are named by its input; with
`as_store` the error is marked as the gateway store's (a store error misread), which
every resumption meets again."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any, TypedDict

from langgraph.graph import END, START, StateGraph

from code_hero.persistence.contention import mark_store


class State(TypedDict, total=False):
    folder: str
    as_store: bool
    done: bool


def pay(state: State) -> dict[str, Any]:
    """Count the side effect (an email sent, a payment made), then meet the lock."""
    folder = Path(state["folder"])
    with open(folder / "side-effects", "a") as file:
        file.write("x")
    own = folder / "own.sqlite"
    with (
        contextlib.closing(sqlite3.connect(own, isolation_level=None)) as holder,
        contextlib.closing(sqlite3.connect(own, timeout=0)) as writer,
    ):
        holder.execute("BEGIN EXCLUSIVE")
        try:
            writer.execute("CREATE TABLE IF NOT EXISTS t (x)")  # database is locked
        except sqlite3.OperationalError as exc:
            if state.get("as_store"):
                mark_store(exc)
            raise
        finally:
            holder.execute("ROLLBACK")
    return {"done": True}


builder: StateGraph[Any] = StateGraph(State)
builder.add_node("pay", pay)
builder.add_edge(START, "pay")
builder.add_edge("pay", END)
graph = builder
