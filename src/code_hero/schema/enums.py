"""The contract's enums. Their values equal the records' enum values."""

from __future__ import annotations

from enum import Enum

import strawberry

__all__ = [
    "BackendKind",
    "CheckpointSource",
    "HealthStatus",
    "MultitaskStrategy",
    "RunStatus",
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


@strawberry.enum(description="What a thread is doing.")
class ThreadStatus(Enum):
    IDLE = "IDLE"
    BUSY = "BUSY"
    INTERRUPTED = "INTERRUPTED"
    ERROR = "ERROR"


@strawberry.enum(description="What wrote a checkpoint.")
class CheckpointSource(Enum):
    INPUT = "INPUT"
    LOOP = "LOOP"
    UPDATE = "UPDATE"
    FORK = "FORK"


@strawberry.enum(description="Where a run is in its life.")
class RunStatus(Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    INTERRUPTED = "INTERRUPTED"
    CANCELLED = "CANCELLED"


@strawberry.enum(
    description="What to do when the thread already has a run in flight: REJECT it "
    "(CONFLICT), ENQUEUE it after the current ones, or INTERRUPT (cancel) them and run it."
)
class MultitaskStrategy(Enum):
    REJECT = "REJECT"
    ENQUEUE = "ENQUEUE"
    INTERRUPT = "INTERRUPT"
