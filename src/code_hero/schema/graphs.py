"""The graphs this server runs and their agents."""

from __future__ import annotations

import strawberry

__all__ = ["Agent", "Graph"]


@strawberry.type(description="An agent (or, for a user's graph, a node) of a graph.")
class Agent:
    name: str = strawberry.field(description='e.g. "FASTAPI_EXPERT".')
    team: str | None = strawberry.field(description='e.g. "development"; null for the supervisor.')
    description: str


@strawberry.type(description="A graph runs can name.")
class Graph:
    name: str
    default: bool = strawberry.field(description="Runs that name no graph run this one.")
    agents: list[Agent]
