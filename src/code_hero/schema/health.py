"""Health of the checkpoint backends."""

from __future__ import annotations

from datetime import datetime

import strawberry

from code_hero.schema.enums import BackendKind, HealthStatus

__all__ = ["BackendHealth", "Health"]


@strawberry.type(description="One checkpoint backend as its last probe saw it.")
class BackendHealth:
    role: str = strawberry.field(description='One of "primary", "fallback" or "emergency".')
    kind: BackendKind
    healthy: bool
    active: bool = strawberry.field(description="This backend serves reads and writes now.")
    latency_ms: float | None = strawberry.field(description="Round trip of the last probe.")
    last_error: str | None = strawberry.field(
        description="Why the last probe failed: the driver's text for administrators, "
        'a category ("connection refused", "timeout", ...) for everyone else.'
    )
    checked_at: datetime | None


@strawberry.type(description="Whether checkpoints are stored, by which backend.")
class Health:
    status: HealthStatus = strawberry.field(
        description="HEALTHY: the primary serves; DEGRADED: a fallback serves; "
        "UNHEALTHY: no checkpointing."
    )
    backends: list[BackendHealth]
    pending_sync: int = strawberry.field(
        description="Checkpoints written to a fallback, not yet copied back to the primary."
    )
    uptime_seconds: float
    version: str
    degraded_since: datetime | None = strawberry.field(
        description="When the primary stopped serving; null while HEALTHY."
    )
    quarantined: int = strawberry.field(
        description="Fallback writes that failed to sync back repeatedly, kept and retried."
    )
