"""The agent catalog: 19 agents, three teams, one lead each, and the package's exports."""

from __future__ import annotations

import pytest

import code_hero.agents
from code_hero.agents import AGENTS
from code_hero.agents.catalog import TEAMS, get_agent, system_prompt, team_lead, team_members
from code_hero.errors import NotFoundError

SEED_AGENTS = {
    "SUPERVISOR",
    "RESEARCH",
    "IMPLEMENTATION",
    "DOCUMENTATION",
    "TRD_CONVERTER",
    "CODE_GENERATOR",
    "CODE_REVIEWER",
    "STANDARDS_ENFORCER",
    "STRATEGIC_EXPERT",
    "LANGCHAIN_EXPERT",
    "LANGGRAPH_EXPERT",
    "LLAMAINDEX_EXPERT",
    "FASTAPI_EXPERT",
    "NEXTJS_EXPERT",
    "PYDANTIC_EXPERT",
    "AGNO_EXPERT",
    "CREWAI_EXPERT",
    "DOCUMENT_ANALYZER",
    "PROMPT_ENGINEER",
}


def test_catalog_holds_the_seeds_19_agents() -> None:
    assert len(AGENTS) == 19
    assert set(AGENTS) == SEED_AGENTS
    assert all(agent.name == name for name, agent in AGENTS.items())
    assert all(agent.description for agent in AGENTS.values())


def test_supervisor_has_no_team_and_everyone_else_has_one() -> None:
    assert AGENTS["SUPERVISOR"].team is None
    others = [agent for name, agent in AGENTS.items() if name != "SUPERVISOR"]
    assert {agent.team for agent in others} == set(TEAMS)


@pytest.mark.parametrize(
    ("team", "lead", "size"),
    [
        ("development", "IMPLEMENTATION", 8),
        ("research", "RESEARCH", 7),
        ("documentation", "DOCUMENTATION", 3),
    ],
)
def test_each_team_has_exactly_one_lead(team: str, lead: str, size: int) -> None:
    members = team_members(team)
    assert len(members) == size
    assert [agent.name for agent in members if agent.lead] == [lead]
    assert team_lead(team).name == lead


def test_expert_membership() -> None:
    assert AGENTS["FASTAPI_EXPERT"].team == "development"
    assert AGENTS["LANGGRAPH_EXPERT"].team == "research"
    assert AGENTS["PROMPT_ENGINEER"].team == "documentation"


def test_unknown_names_raise_not_found() -> None:
    with pytest.raises(NotFoundError, match="NOBODY"):
        get_agent("NOBODY")
    with pytest.raises(NotFoundError, match="marketing"):
        team_members("marketing")


def test_system_prompt_names_the_role() -> None:
    prompt = system_prompt("FASTAPI_EXPERT")
    assert prompt.startswith("You are FASTAPI_EXPERT")
    assert "development team" in prompt


def test_package_exports() -> None:
    assert sorted(code_hero.agents.__all__) == [
        "AGENTS",
        "Agent",
        "AgentState",
        "OfflineChatModel",
        "Route",
        "build_code_hero_graph",
        "make_chat_model",
        "route_request",
    ]
    for name in code_hero.agents.__all__:
        assert getattr(code_hero.agents, name) is not None
