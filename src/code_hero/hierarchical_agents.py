"""The seed's hierarchical agents module: re-exports, no logic of its own."""

from __future__ import annotations

from code_hero.config import (
    create_memory_checkpointer,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)

__all__ = [
    "create_memory_checkpointer",
    "create_postgres_checkpointer",
    "create_sqlite_checkpointer",
]
