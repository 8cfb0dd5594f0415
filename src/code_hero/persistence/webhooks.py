"""Records of webhooks and of their deliveries (the durable outbox), and the store's interface.

A webhook belongs to the user who created it and is told of that user's runs
(the runs on threads the user owns); an administrator's webhook is told of
every run (`all_users`). A delivery is one message to one URL, written in the
same transaction as the run's end or the thread's deletion it tells of, and
then attempted until it is DELIVERED or FAILED.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from code_hero.persistence.records import Page, RunStatus

__all__ = [
    "RUN_EVENT_OF",
    "RUN_WEBHOOK_KEY",
    "Claim",
    "DeliveryFilter",
    "DeliveryRecord",
    "DeliveryStatus",
    "WebhookEvent",
    "WebhookRecord",
    "WebhookStore",
    "event_list",
    "events_of",
]

# Where a run keeps its own webhook URL: in its config, under a key callers cannot set
# (keys starting "__" are refused), so it travels with the run record everywhere the
# record goes (an outage's journal included) and is stripped before the graph runs.
RUN_WEBHOOK_KEY = "__webhook"


class WebhookEvent(StrEnum):
    RUN_SUCCEEDED = "RUN_SUCCEEDED"
    RUN_FAILED = "RUN_FAILED"
    RUN_INTERRUPTED = "RUN_INTERRUPTED"
    RUN_CANCELLED = "RUN_CANCELLED"
    THREAD_DELETED = "THREAD_DELETED"


class DeliveryStatus(StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"


# The event each way a run can end tells of.
RUN_EVENT_OF = {
    RunStatus.SUCCESS: WebhookEvent.RUN_SUCCEEDED,
    RunStatus.ERROR: WebhookEvent.RUN_FAILED,
    RunStatus.INTERRUPTED: WebhookEvent.RUN_INTERRUPTED,
    RunStatus.CANCELLED: WebhookEvent.RUN_CANCELLED,
}


@dataclass(frozen=True)
class WebhookRecord:
    webhook_id: str
    user_id: str | None
    url: str
    events: tuple[WebhookEvent, ...]
    created_at: datetime
    all_users: bool = False  # created by an administrator: told of every user's runs
    # The run filter: each given field must match the run (THREAD_DELETED: thread_id only).
    thread_id: str | None = None
    status: RunStatus | None = None
    graph: str | None = None
    run_user_id: str | None = None


@dataclass(frozen=True)
class DeliveryRecord:
    delivery_id: str  # also the `webhook-id` header: the same on every attempt
    webhook_id: str | None  # None: the run's own `webhook` URL
    user_id: str | None  # who sees it: the webhook's creator, or the run's thread owner
    run_id: str | None
    thread_id: str | None
    event: WebhookEvent
    url: str
    payload: str  # the JSON body, as sent (and signed) on every attempt
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    next_attempt_at: datetime | None = None
    secret: str | None = None  # the webhook's signing secret (claimed deliveries only)


@dataclass(frozen=True)
class Claim:
    """What one claim leased, and when a PENDING delivery it left can next be claimed."""

    deliveries: list[DeliveryRecord]
    # The earliest next try of the rest, or end of a lease another claimer holds on one
    # (a dead replica's lapses then); None: no other delivery is PENDING.
    next_due: datetime | None


@dataclass(frozen=True)
class DeliveryFilter:
    user_id: str | None = None  # None: every user's (administrators)
    webhook_id: str | None = None
    run_id: str | None = None
    status: DeliveryStatus | None = None


class WebhookStore(Protocol):
    """Webhooks and the outbox of their deliveries, in the registry's database."""

    def on_enqueue(self, wake: Callable[[], None]) -> None:
        """Call `wake` after a transaction of this process committed deliveries."""

    async def create_webhook(
        self, webhook: WebhookRecord, secret: str, *, limit: int | None = None
    ) -> bool:
        """Store a webhook with its signing secret; with `limit`, only while its owner has
        fewer webhooks than that (counted and inserted in one step): False, nothing stored."""

    async def delete_webhook(self, webhook_id: str, *, user_id: str | None) -> bool:
        """Delete a webhook (of `user_id`; None: anyone's) and its deliveries."""

    async def list_webhooks(self, *, user_id: str | None) -> list[WebhookRecord]:
        """The webhooks of `user_id` (None: everyone's), oldest first."""

    async def list_deliveries(
        self, flt: DeliveryFilter, *, first: int, after: str | None = None
    ) -> Page[DeliveryRecord]:
        """A page of deliveries, newest first (keyset)."""

    async def count_deliveries(self, flt: DeliveryFilter) -> int:
        """How many deliveries match."""

    async def claim_deliveries(
        self, owner: str, *, now: datetime, until: datetime, limit: int
    ) -> Claim:
        """Lease up to `limit` due PENDING deliveries nobody holds (SKIP LOCKED), and
        say when the next of the others can be claimed (in the same statement on
        PostgreSQL, which also returns the leased rows: one autocommitted statement).
        Bounded by the due index: the first next try to come, and the due rows left."""

    async def delete_finished_deliveries(self, before: datetime, *, limit: int) -> int:
        """Delete up to `limit` DELIVERED or FAILED deliveries created before `before`;
        how many (they outlive their threads and runs, so the sweep bounds them)."""

    async def record_attempt(
        self,
        delivery_id: str,
        owner: str,
        *,
        status: DeliveryStatus,
        status_code: int | None,
        error: str | None,
        next_attempt_at: datetime | None,
        at: datetime,
    ) -> bool:
        """Record one attempt and release the lease; False when `owner` no longer holds it."""


def event_list(events: Sequence[WebhookEvent]) -> str:
    """Events as their column holds them: comma-framed, so `LIKE '%,EVENT,%'` matches one."""
    return "," + ",".join(sorted({WebhookEvent(e).value for e in events})) + ","


def events_of(column: Any) -> tuple[WebhookEvent, ...]:
    """The events a column holds."""
    return tuple(WebhookEvent(e) for e in str(column).split(",") if e)
