"""Persistence: checkpoint backends, fallback, the thread/run registry, the manager."""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562): importing a light submodule, such as the records,
# must not load every driver and LangGraph through this package.
_HOMES = {
    "EnhancedCheckpointerManager": "code_hero.persistence.manager",
    "PruneReport": "code_hero.persistence.manager",
    "ThreadDeletion": "code_hero.persistence.manager",
    "MigrationReport": "code_hero.persistence.transfer",
    "migrate": "code_hero.persistence.transfer",
}

__all__ = [
    "EnhancedCheckpointerManager",
    "MigrationReport",
    "PruneReport",
    "ThreadDeletion",
    "migrate",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
