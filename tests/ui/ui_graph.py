"""The built-in `code_hero` graph with a slow offline model: for watching a run in a browser.

Each streamed token waits TOKEN_DELAY seconds, so a page sees message deltas
arrive while the run is still RUNNING, and has time to cancel it or to lose
its socket mid-run.
"""

from __future__ import annotations

import os
from typing import Any

from langgraph.graph import END, START, MessagesState, StateGraph

from code_hero.agents import OfflineChatModel
from code_hero.agents.graph import build_code_hero_graph

TOKEN_DELAY = float(os.environ.get("UI_TEST_TOKEN_DELAY", "0.03"))
# For the tests that cut the network mid-run: a run of `graph` ends about 1.7 s after
# it starts, which a loaded machine spent before the page had reloaded and gone
# offline (the page then waited for an "Offline" a run that had ended never shows).
LONG_TOKEN_DELAY = 0.1

graph: Any = build_code_hero_graph(OfflineChatModel(token_delay=TOKEN_DELAY))
long_graph: Any = build_code_hero_graph(OfflineChatModel(token_delay=LONG_TOKEN_DELAY))


def _echo(state: MessagesState) -> dict[str, Any]:
    return {"messages": [("ai", "echo")]}


# A graph with no agents: its runs hand over to none.
plain: Any = (
    StateGraph(MessagesState).add_node("echo", _echo).add_edge(START, "echo").add_edge("echo", END)
).compile()
