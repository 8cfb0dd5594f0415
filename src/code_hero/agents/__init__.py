"""The built-in `code_hero` agent graph: 19 agents in three teams, offline by default."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from code_hero.agents.catalog import AGENTS, Agent
from code_hero.agents.routing import Route, route_request

if TYPE_CHECKING:
    from code_hero.agents.graph import build_code_hero_graph
    from code_hero.agents.model import OfflineChatModel, make_chat_model
    from code_hero.agents.state import AgentState

__all__ = [
    "AGENTS",
    "Agent",
    "AgentState",
    "OfflineChatModel",
    "Route",
    "build_code_hero_graph",
    "make_chat_model",
    "route_request",
]

# The graph's own modules load langchain-core's chat models: about 2 MiB resident
# that a server which never runs the built-in graph does without. The catalog and
# the routing (what the `graphs` query lists) load at once.
_LAZY = {
    "AgentState": "state",
    "OfflineChatModel": "model",
    "build_code_hero_graph": "graph",
    "make_chat_model": "model",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
