"""Health of the checkpoint backends."""

from __future__ import annotations

from datetime import datetime

import strawberry

from code_hero.schema.enums import BackendKind, HealthStatus

__all__ = ["AdoptedFallbackFile", "BackendHealth", "FallbackAdoption", "Health"]


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


@strawberry.type(
    description="A dead replica's fallback file this server adopted: the outage writes "
    "it acknowledged, copied into the primary by this server."
)
class AdoptedFallbackFile:
    file: str | None = strawberry.field(
        description="The file's path; null for anyone but an authenticated administrator."
    )
    since: datetime = strawberry.field(description="When this server adopted it.")
    pending_sync: int = strawberry.field(
        description="Writes in it not yet copied into the primary."
    )
    quarantined: int = strawberry.field(
        description="Writes in it the primary refused, or this version cannot read: kept "
        "in the file and retried."
    )
    last_error: str | None = strawberry.field(
        description="Why copying it failed last, if it did (a category for anyone but "
        "an administrator)."
    )


@strawberry.type(description="How the last adoption of a dead replica's fallback file ended.")
class FallbackAdoption:
    file: str | None = strawberry.field(
        description="The file's path; null for anyone but an authenticated administrator, "
        "or when the look for files failed."
    )
    at: datetime
    writes: int = strawberry.field(description="The outage writes the file held when adopted.")
    threads: int
    error: str | None = strawberry.field(
        description="Null: every write is in the primary, and the file is emptied and "
        "released. Otherwise why it failed: tried again at the next probe."
    )


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
    adoptions: list[AdoptedFallbackFile] = strawberry.field(
        default_factory=list,
        description="Dead replicas' fallback files this server copies into the primary "
        "(their writes are not in pendingSync); [] when none.",
    )
    last_adoption: FallbackAdoption | None = strawberry.field(
        default=None,
        description="How the last adoption of a dead replica's fallback file ended; null "
        "before any.",
    )
