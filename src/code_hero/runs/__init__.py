"""Runs: graphs, the background executor, the ordered event log and its bus."""

from code_hero.runs.bus import EventBus, InProcessBus, Subscription
from code_hero.runs.eventlog import EventLog, RunEventWriter
from code_hero.runs.events import EventType, terminal_status
from code_hero.runs.executor import MultitaskStrategy, RunExecutor, StartRun
from code_hero.runs.graphs import GraphInfo, GraphRegistry

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
