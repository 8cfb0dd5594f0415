"""The built-in `code_hero` graph: a supervisor over three team subgraphs.

    START -> SUPERVISOR -> development | research | documentation -> END
                     \\-> END (when a person rejects the plan)

Each team is a compiled subgraph added as a node, so its checkpoints live in
their own namespace ("development:<task-id>"): inside it the team lead hands
the request to one expert, or answers it itself, and the expert answers
through the chat model. The builder is returned uncompiled; the caller
compiles it with its own checkpointer.
"""

from __future__ import annotations

from langchain_core.language_models import BaseChatModel
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from code_hero.agents.catalog import SUPERVISOR, TEAMS, team_lead, team_members
from code_hero.agents.model import OfflineChatModel
from code_hero.agents.nodes import make_expert_node, make_lead_node, supervisor_node
from code_hero.agents.state import AgentState

__all__ = ["CodeHeroBuilder", "build_code_hero_graph", "build_team_graph"]

CodeHeroBuilder = StateGraph[AgentState, None, AgentState, AgentState]
"""The type of the uncompiled graph builders made here."""


def build_team_graph(
    team: str, model: BaseChatModel
) -> CompiledStateGraph[AgentState, None, AgentState, AgentState]:
    """The compiled subgraph of one team: its lead, then at most one expert."""
    lead = team_lead(team).name
    experts = [agent.name for agent in team_members(team) if agent.name != lead]
    builder: CodeHeroBuilder = StateGraph(AgentState)
    builder.add_node(lead, make_lead_node(team, model), destinations=(*experts, END))
    for expert in experts:
        builder.add_node(expert, make_expert_node(expert, model))
        builder.add_edge(expert, END)
    builder.add_edge(START, lead)
    return builder.compile(name=team)


def build_code_hero_graph(model: BaseChatModel | None = None) -> CodeHeroBuilder:
    """The uncompiled `code_hero` graph; `model` defaults to the offline chat model."""
    chat = model if model is not None else OfflineChatModel()
    builder: CodeHeroBuilder = StateGraph(AgentState)
    builder.add_node(SUPERVISOR, supervisor_node, destinations=(*TEAMS, END))
    for team in TEAMS:
        builder.add_node(team, build_team_graph(team, chat))
        builder.add_edge(team, END)
    builder.add_edge(START, SUPERVISOR)
    return builder
