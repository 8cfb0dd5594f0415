"""Webhooks: URLs told (POST, signed) when runs end or threads are deleted, and their deliveries."""

from __future__ import annotations

from datetime import datetime

import strawberry

from code_hero.persistence.webhooks import DeliveryStatus, WebhookEvent
from code_hero.schema import fields
from code_hero.schema.paging import Counter, PageInfo
from code_hero.schema.runs import RunFilter

__all__ = [
    "CreateWebhookInput",
    "CreateWebhookPayload",
    "DeliveryStatus",
    "Webhook",
    "WebhookDelivery",
    "WebhookDeliveryConnection",
    "WebhookDeliveryEdge",
    "WebhookEvent",
]

strawberry.enum(WebhookEvent, description="What a webhook is told of.")
strawberry.enum(
    DeliveryStatus,
    description="PENDING: to be tried (again); DELIVERED: a 2xx answer; FAILED: every try failed.",
)


@strawberry.input(description="A URL to tell of events of the caller's runs and threads.")
class CreateWebhookInput:
    url: str = strawberry.field(description="http or https; private addresses are refused.")
    events: list[WebhookEvent]
    filter: RunFilter | None = strawberry.field(
        default=None, description="Only runs that match (run events)."
    )


@strawberry.type(description="A URL told (POST, signed) of events of its creator's runs.")
class Webhook:
    id: strawberry.ID
    url: str
    events: list[WebhookEvent]
    user_id: str | None
    created_at: datetime


@strawberry.type(description="A new webhook and its signing secret.")
class CreateWebhookPayload:
    webhook: Webhook
    secret: str = strawberry.field(
        description="The signing secret (Standard Webhooks, whsec_...); shown only here."
    )


@strawberry.type(description="One message to one URL, and how its attempts went.")
class WebhookDelivery:
    id: strawberry.ID = strawberry.field(description="Also its `webhook-id` header.")
    webhook_id: strawberry.ID | None = strawberry.field(
        description="Null for a run's own `webhook` URL."
    )
    run_id: strawberry.ID | None
    thread_id: strawberry.ID | None
    event: WebhookEvent
    url: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None


@strawberry.type
class WebhookDeliveryEdge:
    cursor: str
    node: WebhookDelivery


@strawberry.type(description="A page of webhook deliveries, newest first.")
class WebhookDeliveryConnection:
    edges: list[WebhookDeliveryEdge]
    page_info: PageInfo
    count: strawberry.Private[Counter]

    @fields.field("How many deliveries match in all (counted only when asked for).")
    async def total_count(self) -> int:
        return await self.count()
