"""The 19 agents of Code Hero as data: who they are, which team, what they do.

SUPERVISOR                      routes every request to one team
├── development   IMPLEMENTATION (lead), CODE_GENERATOR, CODE_REVIEWER,
│                 STANDARDS_ENFORCER, TRD_CONVERTER, FASTAPI_EXPERT,
│                 NEXTJS_EXPERT, PYDANTIC_EXPERT
├── research      RESEARCH (lead), STRATEGIC_EXPERT, LANGCHAIN_EXPERT,
│                 LANGGRAPH_EXPERT, LLAMAINDEX_EXPERT, AGNO_EXPERT, CREWAI_EXPERT
└── documentation DOCUMENTATION (lead), DOCUMENT_ANALYZER, PROMPT_ENGINEER
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from code_hero.errors import NotFoundError

__all__ = [
    "AGENTS",
    "SUPERVISOR",
    "TEAMS",
    "Agent",
    "get_agent",
    "system_prompt",
    "team_lead",
    "team_members",
]

SUPERVISOR: Final = "SUPERVISOR"
TEAMS: Final = ("development", "research", "documentation")


@dataclass(frozen=True)
class Agent:
    """One agent: its name, its team (None for the supervisor) and what it does."""

    name: str
    team: str | None
    description: str
    lead: bool = False


_AGENT_LIST = (
    Agent(SUPERVISOR, None, "Reads each request and hands it to the team that fits it."),
    # development
    Agent(
        "IMPLEMENTATION",
        "development",
        "Leads the development team: plans the work and picks the expert for it.",
        lead=True,
    ),
    Agent("CODE_GENERATOR", "development", "Writes Python code for a described task."),
    Agent("CODE_REVIEWER", "development", "Reviews code, compiling it to find syntax errors."),
    Agent(
        "STANDARDS_ENFORCER",
        "development",
        "Checks code against the house style: line length, docstrings.",
    ),
    Agent("TRD_CONVERTER", "development", "Turns a request into numbered technical requirements."),
    Agent("FASTAPI_EXPERT", "development", "Builds HTTP APIs with FastAPI."),
    Agent("NEXTJS_EXPERT", "development", "Builds web front ends with Next.js and React."),
    Agent("PYDANTIC_EXPERT", "development", "Designs data models and validation with Pydantic."),
    # research
    Agent(
        "RESEARCH",
        "research",
        "Leads the research team: answers general questions or picks the expert.",
        lead=True,
    ),
    Agent("STRATEGIC_EXPERT", "research", "Weighs options and lays out a plan and its risks."),
    Agent("LANGCHAIN_EXPERT", "research", "Knows LangChain: chat models, prompts, runnables."),
    Agent("LANGGRAPH_EXPERT", "research", "Knows LangGraph: graphs, checkpoints, interrupts."),
    Agent("LLAMAINDEX_EXPERT", "research", "Knows LlamaIndex: indexing and retrieval."),
    Agent("AGNO_EXPERT", "research", "Knows Agno: agents with tools and memory."),
    Agent("CREWAI_EXPERT", "research", "Knows CrewAI: crews of role-playing agents."),
    # documentation
    Agent(
        "DOCUMENTATION",
        "documentation",
        "Leads the documentation team: writes READMEs and guides or picks the expert.",
        lead=True,
    ),
    Agent("DOCUMENT_ANALYZER", "documentation", "Analyses a document's structure and content."),
    Agent("PROMPT_ENGINEER", "documentation", "Writes and improves prompts for language models."),
)

AGENTS: Final = MappingProxyType({agent.name: agent for agent in _AGENT_LIST})
"""Every agent by name, in catalog order."""


def get_agent(name: str) -> Agent:
    """The agent called `name`; NotFoundError if there is none."""
    try:
        return AGENTS[name]
    except KeyError:
        raise NotFoundError(f"No agent called {name!r}; known: {', '.join(AGENTS)}") from None


def team_members(team: str) -> tuple[Agent, ...]:
    """The agents of `team`, lead first."""
    if team not in TEAMS:
        raise NotFoundError(f"No team called {team!r}; known: {', '.join(TEAMS)}")
    members = [agent for agent in AGENTS.values() if agent.team == team]
    return tuple(sorted(members, key=lambda agent: not agent.lead))


def team_lead(team: str) -> Agent:
    """The agent that leads `team`."""
    return team_members(team)[0]


def system_prompt(name: str) -> str:
    """The system prompt that gives a chat model the role of agent `name`."""
    agent = get_agent(name)
    where = f"on the {agent.team} team" if agent.team else "over all teams"
    return (
        f"You are {agent.name}, an agent of Code Hero {where}. {agent.description} "
        "Answer the user's last request within your speciality, concisely."
    )
