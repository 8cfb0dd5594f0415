"""The public modules export exactly what they declare."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "code_hero.checkpointing",
    "code_hero.hierarchical_agents",
    "code_hero.config",
    "code_hero.errors",
    "code_hero.persistence",
    "code_hero.persistence.records",
    "code_hero.persistence.registry",
    "code_hero.agents",
    "code_hero.auth",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__, name
    for export in module.__all__:
        assert hasattr(module, export), f"{name}.{export}"


def test_the_seed_api_is_importable() -> None:
    from code_hero.checkpointing import (  # noqa: F401
        LANGGRAPH_CHECKPOINTING_AVAILABLE,
        POSTGRES_AVAILABLE,
        CheckpointerConfig,
        CheckpointerType,
        EnhancedCheckpointerManager,
        create_memory_checkpointer,
        create_postgres_checkpointer,
        create_sqlite_checkpointer,
        get_development_checkpointer_config,
        get_production_checkpointer_config,
        initialize_enhanced_checkpointing,
        integrate_with_memory_manager,
    )
    from code_hero.hierarchical_agents import (  # noqa: F401
        create_memory_checkpointer as _m,
    )

    assert LANGGRAPH_CHECKPOINTING_AVAILABLE and POSTGRES_AVAILABLE
    assert {t.name for t in CheckpointerType} >= {
        "MEMORY",
        "SQLITE",
        "ASYNC_SQLITE",
        "POSTGRES",
        "ASYNC_POSTGRES",
    }
