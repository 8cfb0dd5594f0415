"""Deterministic keyword routing: which team and which expert answer a request.

The rules are tried in order and the first whose pattern occurs in the request
wins, so the specific activities (review, standards, requirements, documents)
come before the framework names, and those before the catch-alls. A request
that matches nothing goes to the research team's lead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from code_hero.agents.catalog import AGENTS, team_lead

__all__ = ["RULES", "Route", "Rule", "route_request"]


@dataclass(frozen=True)
class Rule:
    """Requests matching `pattern` (case-insensitive) go to `expert`."""

    pattern: str
    expert: str
    topic: str

    @property
    def team(self) -> str:
        """The team of this rule's expert."""
        team = AGENTS[self.expert].team
        assert team is not None, f"{self.expert} belongs to no team"
        return team


@dataclass(frozen=True)
class Route:
    """Where a request goes, and why, in words a person can read."""

    team: str
    lead: str
    expert: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        """The route as JSON-friendly data (it is kept in the graph state)."""
        return {"team": self.team, "lead": self.lead, "expert": self.expert, "reason": self.reason}


RULES: Final = (
    Rule(r"\breview\w*|\bcritique\b|\bfind (?:the )?bugs?\b", "CODE_REVIEWER", "a code review"),
    Rule(
        r"\bstandards?\b|\blint\w*|\bstyle\b|\bpep ?8\b|\bdocstrings?\b",
        "STANDARDS_ENFORCER",
        "coding standards",
    ),
    Rule(r"\btrds?\b|\brequirements?\b|\bspecification\b", "TRD_CONVERTER", "requirements"),
    Rule(r"\bprompts?\b", "PROMPT_ENGINEER", "prompt engineering"),
    Rule(r"\banaly[sz]\w*", "DOCUMENT_ANALYZER", "document analysis"),
    Rule(
        r"\bdocumentation\b|\bdocs\b|\breadme\b|\bdocument\b|\bguide\b|\btutorial\b",
        "DOCUMENTATION",
        "documentation",
    ),
    Rule(r"\bfast ?api\b", "FASTAPI_EXPERT", "FastAPI work"),
    Rule(r"\bnext\.?js\b|\breact\b", "NEXTJS_EXPERT", "Next.js work"),
    Rule(r"\bpydantic\b", "PYDANTIC_EXPERT", "Pydantic modelling"),
    Rule(r"\blang ?graph\b", "LANGGRAPH_EXPERT", "LangGraph work"),
    Rule(r"\blang ?chain\b", "LANGCHAIN_EXPERT", "LangChain work"),
    Rule(r"\bllama ?index\b", "LLAMAINDEX_EXPERT", "LlamaIndex work"),
    Rule(r"\bagno\b", "AGNO_EXPERT", "Agno work"),
    Rule(r"\bcrew ?ai\b", "CREWAI_EXPERT", "CrewAI work"),
    Rule(
        r"\bstrateg\w*|\broadmap\b|\btrade-?offs?\b|\bshould (?:i|we)\b|\bcompare\b",
        "STRATEGIC_EXPERT",
        "strategy",
    ),
    Rule(r"\barchitecture\b|\bplan\b", "IMPLEMENTATION", "implementation planning"),
    Rule(
        r"\bcode\b|\bfunction\b|\bclass\b|\bscript\b|\bimplement\w*|\bpython\b"
        r"|\bprogram\b|\bbuild\b|\brefactor\w*|\balgorithm\b",
        "CODE_GENERATOR",
        "writing code",
    ),
)
"""The routing table, tried in order; the first match wins."""

_COMPILED: Final = tuple((re.compile(rule.pattern, re.IGNORECASE), rule) for rule in RULES)


def route_request(text: str) -> Route:
    """The team, lead and expert for a request, with the reason in words."""
    for pattern, rule in _COMPILED:
        match = pattern.search(text)
        if match:
            reason = f"{match.group(0)!r} in the request points to {rule.topic}"
            return Route(rule.team, team_lead(rule.team).name, rule.expert, reason)
    lead = team_lead("research").name
    reason = "no specialist keyword in the request, so the research lead answers it"
    return Route("research", lead, lead, reason)
