"""The seed's hierarchical agents module: re-exports, no logic of its own."""

from __future__ import annotations

from code_hero.agents import AGENTS, build_code_hero_graph
from code_hero.agents.process import process_with_hierarchical_agents
from code_hero.config import (
    create_memory_checkpointer,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)

__all__ = [
    "AGENTS",
    "build_code_hero_graph",
    "create_memory_checkpointer",
    "create_postgres_checkpointer",
    "create_sqlite_checkpointer",
    "process_with_hierarchical_agents",
]
