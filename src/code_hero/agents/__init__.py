"""The built-in `code_hero` agent graph: 19 agents in three teams, offline by default."""

from code_hero.agents.catalog import AGENTS, Agent
from code_hero.agents.graph import build_code_hero_graph
from code_hero.agents.model import OfflineChatModel, make_chat_model
from code_hero.agents.routing import Route, route_request
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
