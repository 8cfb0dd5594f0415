"""The contract's enums. Statuses and the multitask strategy are the records' own
enums, served as they are: one definition, no mapping between copies."""

from __future__ import annotations

from enum import Enum

import strawberry

from code_hero.persistence.records import (
    MultitaskStrategy,
    RunStatus,
    SortDirection,
    ThreadSortField,
    ThreadStatus,
)

__all__ = [
    "BackendKind",
    "CheckpointSource",
    "HealthStatus",
    "MultitaskStrategy",
    "RunEventType",
    "RunSortField",
    "RunStatus",
    "SortDirection",
    "ThreadSortField",
    "ThreadStatus",
]


@strawberry.enum(description="Whether checkpoints are being stored, and where.")
class HealthStatus(Enum):
    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"


@strawberry.enum(description="The database behind a checkpoint backend.")
class BackendKind(Enum):
    MEMORY = "MEMORY"
    SQLITE = "SQLITE"
    POSTGRES = "POSTGRES"


strawberry.enum(ThreadStatus, description="What a thread is doing.")


@strawberry.enum(description="What wrote a checkpoint.")
class CheckpointSource(Enum):
    INPUT = "INPUT"
    LOOP = "LOOP"
    UPDATE = "UPDATE"
    FORK = "FORK"


strawberry.enum(RunStatus, description="Where a run is in its life.")
strawberry.enum(SortDirection, description="ASC: oldest first; DESC: newest first.")
strawberry.enum(ThreadSortField, description="The time threads are listed by.")


@strawberry.enum(description="The time runs are listed by.")
class RunSortField(Enum):
    CREATED_AT = "CREATED_AT"


strawberry.enum(
    MultitaskStrategy,
    description="What to do when the thread already has a run in flight: REJECT it "
    "(CONFLICT), ENQUEUE it after the current ones, or INTERRUPT (cancel) them and run it.",
)


@strawberry.enum(description="The event types, to subscribe to some only.")
class RunEventType(Enum):
    # Values are the stored type names (`code_hero.runs.events.EventType`), which the
    # schema cannot import (it loads no LangGraph).
    RUN_STATUS_CHANGED = "status"
    AGENT_TRANSITION = "agent_transition"
    NODE_UPDATE = "node_update"
    MESSAGE_DELTA = "message_delta"
    CHECKPOINT_SAVED = "checkpoint"
    INTERRUPTED = "interrupt"
    TOOL_CALL = "tool_call"
    CUSTOM_EVENT = "custom"
