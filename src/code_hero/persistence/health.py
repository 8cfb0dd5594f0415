"""The health of the checkpoint store, in one model.

The manager builds a `HealthReport` (a `BackendReport` per slot) from what
the background probe last saw; whatever shows health renders it:
`to_dict()` is the seed's `health_check()` report, `status_dict()` the
seed's `health_status` (what anyone but an administrator may see of it is
`diagnosis.public_health`). With a durable fallback it also names the dead
replicas' files this server adopts (`adoption.py`) and how the last adoption ended.

    healthy     the primary serves reads and writes
    degraded    a fallback serves them
    unhealthy   none does: no checkpoints are stored
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from code_hero.persistence.adoption import AdoptedFile, Adoption, Adoptions
    from code_hero.persistence.fallback import FallbackRouter
    from code_hero.persistence.slots import BackendSlot

__all__ = ["ROLES", "BackendReport", "HealthReport", "HealthStatus", "report_of", "status_of"]

HealthStatus = Literal["healthy", "degraded", "unhealthy"]

# The slots in their fallback order; the seed's report names each "<role>_checkpointer".
ROLES = ("primary", "fallback", "emergency")


def status_of(router: FallbackRouter | None) -> HealthStatus:
    """healthy (the primary serves), degraded (a fallback serves) or unhealthy (none)."""
    if router is None or router.active is None:
        return "unhealthy"
    return "healthy" if router.active == 0 else "degraded"


@dataclass(frozen=True)
class BackendReport:
    """One backend as its last probe saw it."""

    role: str
    kind: str
    type: str
    healthy: bool  # answers and takes writes
    reachable: bool  # answered its last probe (it may still refuse writes: a full journal)
    active: bool
    latency_ms: float | None
    last_error: str | None
    checked_at: datetime | None
    description: str | None  # where the data lives

    def to_dict(self) -> dict[str, Any]:
        """The seed's per-backend entry."""
        entry: dict[str, Any] = {
            "role": self.role,
            "kind": self.kind,
            "type": self.type,
            "healthy": self.healthy,
            "active": self.active,
            "latency_ms": self.latency_ms,
            "last_error": self.last_error,
            "checked_at": self.checked_at,
        }
        if self.description is not None:
            entry["description"] = self.description
        return entry


@dataclass(frozen=True)
class HealthReport:
    """Whether checkpoints are stored, by which backend, and what waits for the primary."""

    status: HealthStatus
    active_backend: str | None
    pending_sync: int
    degraded_since: datetime | None
    quarantined: int
    uptime_seconds: float
    version: str
    backends: tuple[BackendReport, ...]
    # Dead replicas' fallback files this server holds and copies into the primary (their
    # writes are not in `pending_sync`), and how the last adoption ended.
    adoptions: tuple[AdoptedFile, ...] = ()
    last_adoption: Adoption | None = None

    def backend(self, role: str) -> BackendReport | None:
        """The backend in that role, if there is one."""
        return next((b for b in self.backends if b.role == role), None)

    def to_dict(self) -> dict[str, Any]:
        """The seed's `health_check()` report."""
        report: dict[str, Any] = {
            "overall_status": self.status,
            "active_backend": self.active_backend,
            "pending_sync": self.pending_sync,
            "degraded_since": self.degraded_since,
            "quarantined": self.quarantined,
            "uptime_seconds": self.uptime_seconds,
            "version": self.version,
            "backends": [b.to_dict() for b in self.backends],
            "adoptions": [
                {
                    "file": str(a.path),
                    "since": a.since,
                    "pending_sync": a.pending_sync,
                    "quarantined": a.quarantined,
                    "last_error": a.last_error,
                }
                for a in self.adoptions
            ],
            "last_adoption": None,
        }
        last = self.last_adoption
        if last is not None:
            report["last_adoption"] = {
                "file": None if last.path is None else str(last.path),
                "at": last.at,
                "writes": last.writes,
                "threads": last.threads,
                "error": last.error,
            }
        for role in ROLES:
            backend = self.backend(role)
            if backend is not None:
                report[f"{role}_checkpointer"] = backend.to_dict()
        return report

    def status_dict(self, last_check: datetime) -> dict[str, Any]:
        """The seed's `health_status` entries, as of `last_check`."""
        primary, fallback = self.backend("primary"), self.backend("fallback")
        return {
            "primary_healthy": bool(self.status == "healthy" and primary and primary.reachable),
            "fallback_healthy": bool(fallback and fallback.reachable),
            "active_backend": self.active_backend,
            "overall_status": self.status,
            "pending_sync": self.pending_sync,
            "last_check": last_check,
        }


def report_of(
    router: FallbackRouter | None,
    *,
    uptime_seconds: float,
    version: str,
    adoptions: Adoptions | None = None,
) -> HealthReport:
    """The report of what the router's last probes saw (no router: nothing is stored),
    and of the files `adoptions` holds."""
    if router is None:
        return HealthReport("unhealthy", None, 0, None, 0, uptime_seconds, version, ())
    active = router.active_slot
    return HealthReport(
        status=status_of(router),
        active_backend=None if active is None else active.role,
        pending_sync=router.pending_sync,
        degraded_since=router.degraded_since,
        quarantined=router.quarantined,
        uptime_seconds=uptime_seconds,
        version=version,
        backends=tuple(_backend_of(router, slot) for slot in router.slots),
        adoptions=() if adoptions is None else tuple(adoptions.files()),
        last_adoption=None if adoptions is None else adoptions.last,
    )


def _backend_of(router: FallbackRouter, slot: BackendSlot) -> BackendReport:
    healthy, last_error = slot.healthy, slot.last_error
    if slot is not router.primary and router.journal.full:
        # It answers, but takes no more writes: say why new runs are refused.
        healthy = False
        last_error = (
            f"the outage journal is full ({router.journal.limit} writes wait for the "
            "primary): new writes answer UNAVAILABLE until it is back"
        )
    return BackendReport(
        role=slot.role,
        kind=slot.kind,
        type=slot.config.type.value,
        healthy=healthy,
        reachable=slot.healthy,
        active=router.active_slot is slot,
        latency_ms=slot.latency_ms,
        last_error=last_error,
        checked_at=slot.checked_at,
        description=slot.config.describe(),
    )
