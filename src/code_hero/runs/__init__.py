"""Runs: graphs, the background executor, the ordered event log and its bus."""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562): importing a light submodule, such as the records,
# must not load every driver and LangGraph through this package.
_HOMES = {
    "EventBus": "code_hero.runs.bus",
    "InProcessBus": "code_hero.runs.bus",
    "Subscription": "code_hero.runs.bus",
    "EventLog": "code_hero.runs.eventlog",
    "RunEventWriter": "code_hero.runs.eventlog",
    "EventType": "code_hero.runs.events",
    "terminal_status": "code_hero.runs.events",
    "MultitaskStrategy": "code_hero.runs.requests",
    "StartRun": "code_hero.runs.requests",
    "RunExecutor": "code_hero.runs.executor",
    "GraphInfo": "code_hero.runs.graphs",
    "GraphRegistry": "code_hero.runs.graphs",
}

__all__ = [
    "EventBus",
    "EventLog",
    "EventType",
    "GraphInfo",
    "GraphRegistry",
    "InProcessBus",
    "MultitaskStrategy",
    "RunEventWriter",
    "RunExecutor",
    "StartRun",
    "Subscription",
    "terminal_status",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
