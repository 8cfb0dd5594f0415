"""Keyword routing: each kind of request reaches the team and expert that fit it."""

from __future__ import annotations

import pytest

from code_hero.agents import route_request

CASES = [
    ("Help me build a FastAPI application", "development", "FASTAPI_EXPERT"),
    ("Make a Next.js page listing products", "development", "NEXTJS_EXPERT"),
    ("Design a pydantic model for users", "development", "PYDANTIC_EXPERT"),
    ("Please review my pull request", "development", "CODE_REVIEWER"),
    ("Lint this module against our standards", "development", "STANDARDS_ENFORCER"),
    ("Turn this into a TRD", "development", "TRD_CONVERTER"),
    ("List the requirements for a login page", "development", "TRD_CONVERTER"),
    ("Write a Python function that reverses a list", "development", "CODE_GENERATOR"),
    ("Plan the architecture of the billing service", "development", "IMPLEMENTATION"),
    ("How do chains work in LangChain?", "research", "LANGCHAIN_EXPERT"),
    ("How do I add a checkpointer in LangGraph?", "research", "LANGGRAPH_EXPERT"),
    ("Index my PDFs with LlamaIndex", "research", "LLAMAINDEX_EXPERT"),
    ("Build an agent with Agno", "research", "AGNO_EXPERT"),
    ("Set up a CrewAI crew", "research", "CREWAI_EXPERT"),
    ("What strategy should we take for the launch?", "research", "STRATEGIC_EXPERT"),
    ("Why is the sky blue?", "research", "RESEARCH"),
    ("Write a README for this project", "documentation", "DOCUMENTATION"),
    ("Improve the docs", "documentation", "DOCUMENTATION"),
    ("Analyse this document for gaps", "documentation", "DOCUMENT_ANALYZER"),
    ("Write a system prompt for a support bot", "documentation", "PROMPT_ENGINEER"),
]


@pytest.mark.parametrize(("text", "team", "expert"), CASES)
def test_routing_table(text: str, team: str, expert: str) -> None:
    route = route_request(text)
    assert (route.team, route.expert) == (team, expert)


def test_route_names_the_team_lead_and_a_reason() -> None:
    route = route_request("Help me build a FastAPI application")
    assert route.lead == "IMPLEMENTATION"
    assert "FastAPI" in route.reason
    assert route.as_dict() == {
        "team": "development",
        "lead": "IMPLEMENTATION",
        "expert": "FASTAPI_EXPERT",
        "reason": route.reason,
    }


def test_unmatched_request_goes_to_the_research_lead_with_a_reason() -> None:
    route = route_request("Tell me something interesting")
    assert (route.team, route.lead, route.expert) == ("research", "RESEARCH", "RESEARCH")
    assert "no specialist keyword" in route.reason


def test_routing_is_case_insensitive_and_deterministic() -> None:
    upper, lower = route_request("FASTAPI please"), route_request("fastapi please")
    assert (upper.team, upper.expert) == (lower.team, lower.expert)
    assert route_request("fastapi please") == lower
