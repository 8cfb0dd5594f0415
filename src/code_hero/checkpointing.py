"""The seed's public checkpointing module (docs/enhanced-checkpointing.md).

from code_hero.checkpointing import EnhancedCheckpointerManager, CheckpointerConfig

Mostly re-exports of `config` and `persistence`. It also holds the parts of
the seed's API that nothing else in the package calls: the `*_AVAILABLE`
flags (which optional backends are installed), `initialize_enhanced_checkpointing`
(a manager for an environment, initialized) and `integrate_with_memory_manager`
(hand the manager to the caller's memory manager).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from code_hero.config import (
    CheckpointerConfig,
    CheckpointerType,
    config_for_environment,
    config_from_url,
    create_memory_checkpointer,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
    get_development_checkpointer_config,
    get_production_checkpointer_config,
    get_testing_checkpointer_config,
)
from code_hero.persistence.manager import EnhancedCheckpointerManager, PruneReport, ThreadDeletion
from code_hero.persistence.transfer import MigrationReport, migrate

__all__ = [
    "LANGGRAPH_CHECKPOINTING_AVAILABLE",
    "POSTGRES_AVAILABLE",
    "SQLITE_AVAILABLE",
    "CheckpointerConfig",
    "CheckpointerType",
    "EnhancedCheckpointerManager",
    "MigrationReport",
    "PruneReport",
    "ThreadDeletion",
    "config_for_environment",
    "config_from_url",
    "create_memory_checkpointer",
    "create_postgres_checkpointer",
    "create_sqlite_checkpointer",
    "get_development_checkpointer_config",
    "get_production_checkpointer_config",
    "get_testing_checkpointer_config",
    "initialize_enhanced_checkpointing",
    "integrate_with_memory_manager",
    "migrate",
]


def _installed(*modules: str) -> bool:
    try:
        return all(importlib.util.find_spec(m) is not None for m in modules)
    except ModuleNotFoundError:
        return False


LANGGRAPH_CHECKPOINTING_AVAILABLE = _installed("langgraph.checkpoint.base")
SQLITE_AVAILABLE = _installed("langgraph.checkpoint.sqlite", "aiosqlite")
POSTGRES_AVAILABLE = _installed("langgraph.checkpoint.postgres", "psycopg", "psycopg_pool")


async def initialize_enhanced_checkpointing(
    environment: str = "development",
    custom_config: CheckpointerConfig | None = None,
    **kwargs: Any,
) -> EnhancedCheckpointerManager:
    """An initialized manager for the environment (or `custom_config`)."""
    memory_manager = kwargs.pop("memory_manager", None)
    manager = EnhancedCheckpointerManager(
        custom_config or config_for_environment(environment),
        environment=environment,
        logger_service=kwargs.pop("logger_service", None),
        memory_manager=memory_manager,
    )
    await manager.initialize()
    if memory_manager is not None:
        await integrate_with_memory_manager(manager, memory_manager)
    return manager


async def integrate_with_memory_manager(
    checkpointer_manager: EnhancedCheckpointerManager, memory_manager: Any
) -> bool:
    """Hand the manager to a memory manager; False when there is none to integrate."""
    if memory_manager is None:
        return False
    checkpointer_manager.memory_manager = memory_manager
    attach = getattr(memory_manager, "set_checkpointer_manager", None)
    if callable(attach):
        result = attach(checkpointer_manager)
        if hasattr(result, "__await__"):
            await result
        return True
    try:
        memory_manager.checkpointer_manager = checkpointer_manager
    except AttributeError:
        return False
    return True
