"""A graph whose one node does something outside (counted in a file), then has another
session lock the gateway's `checkpoints` table (as an administrator's VACUUM FULL or
another replica's migration would) until the test creates a file named `release`.
Only the first execution takes the lock; every execution counts its side effect."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, TypedDict

import psycopg
from langgraph.graph import END, START, StateGraph


class State(TypedDict, total=False):
    folder: str
    dsn: str
    done: bool


def _hold(dsn: str, folder: Path) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute("LOCK TABLE checkpoints IN ACCESS EXCLUSIVE MODE")
        (folder / "locked").touch()
        deadline = time.monotonic() + 60  # a guard against a test that never releases
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        conn.commit()
    (folder / "unlocked").touch()  # the test's database may be dropped from now on


def pay(state: State) -> dict[str, Any]:
    folder = Path(state["folder"])
    with open(folder / "side-effects", "a") as file:
        file.write("x")
    if not (folder / "started").exists():
        (folder / "started").touch()
        threading.Thread(target=_hold, args=(state["dsn"], folder), daemon=True).start()
        while not (folder / "locked").exists():
            time.sleep(0.01)
    return {"done": True}


builder: StateGraph[Any] = StateGraph(State)
builder.add_node("pay", pay)
builder.add_edge(START, "pay")
builder.add_edge("pay", END)
graph = builder
