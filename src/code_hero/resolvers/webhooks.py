"""Webhooks: create, delete, list, and their deliveries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import strawberry

from code_hero.persistence.records import RunFilter
from code_hero.persistence.registry.cursors import delivery_cursor
from code_hero.persistence.webhooks import DeliveryRecord, DeliveryStatus, WebhookRecord
from code_hero.resolvers.paging import check_first
from code_hero.schema import paging as p
from code_hero.schema import webhooks as w

if TYPE_CHECKING:
    from strawberry import Info

    from code_hero.resolvers.context import Context

__all__ = ["create_webhook", "delete_webhook", "webhook_deliveries", "webhooks"]


def _webhook(record: WebhookRecord) -> w.Webhook:
    return w.Webhook(
        id=strawberry.ID(record.webhook_id),
        url=record.url,
        events=list(record.events),
        user_id=record.user_id,
        created_at=record.created_at,
    )


def _delivery(record: DeliveryRecord) -> w.WebhookDelivery:
    return w.WebhookDelivery(
        id=strawberry.ID(record.delivery_id),
        webhook_id=None if record.webhook_id is None else strawberry.ID(record.webhook_id),
        run_id=None if record.run_id is None else strawberry.ID(record.run_id),
        thread_id=None if record.thread_id is None else strawberry.ID(record.thread_id),
        event=record.event,
        url=record.url,
        status=record.status,
        attempts=record.attempts,
        last_status_code=record.last_status_code,
        last_error=record.last_error,
        created_at=record.created_at,
        delivered_at=record.delivered_at,
        next_attempt_at=record.next_attempt_at,
    )


async def create_webhook(
    info: Info[Context, Any], data: w.CreateWebhookInput
) -> w.CreateWebhookPayload:
    """Register a webhook; the payload holds its secret, shown this once."""
    ctx = info.context
    flt = None
    if data.filter is not None:
        flt = RunFilter(
            thread_id=data.filter.thread_id,
            status=data.filter.status,
            graph=data.filter.graph,
            user_id=data.filter.user_id,
            # Not matched by deliveries: passed on to be refused (`create_webhook`).
            statuses=data.filter.statuses,
            metadata=cast(Any, data.filter.metadata),  # a JSON value: any, refused
            created_after=data.filter.created_after,
            created_before=data.filter.created_before,
        )
    made = await ctx.gateway.create_webhook(data.url, data.events, flt, caller=ctx.caller)
    return w.CreateWebhookPayload(webhook=_webhook(made.webhook), secret=made.secret)


async def delete_webhook(info: Info[Context, Any], webhook_id: str) -> bool:
    """Delete one of the caller's webhooks; false when there is none."""
    ctx = info.context
    return await ctx.gateway.delete_webhook(webhook_id, caller=ctx.caller)


async def webhooks(info: Info[Context, Any]) -> list[w.Webhook]:
    """The caller's webhooks, oldest first."""
    ctx = info.context
    return [_webhook(x) for x in await ctx.gateway.list_webhooks(caller=ctx.caller)]


async def webhook_deliveries(
    info: Info[Context, Any],
    first: int | None,
    after: str | None,
    webhook_id: str | None,
    run_id: str | None,
    status: DeliveryStatus | None,
) -> w.WebhookDeliveryConnection:
    """A page of the caller's deliveries, newest first."""
    ctx = info.context
    page = await ctx.gateway.webhook_deliveries(
        first=check_first(first, ctx.limits),
        after=after,
        webhook_id=webhook_id,
        run_id=run_id,
        status=status,
        caller=ctx.caller,
    )

    async def count() -> int:
        return await ctx.gateway.webhook_deliveries_count(
            webhook_id=webhook_id, run_id=run_id, status=status, caller=ctx.caller
        )

    return w.WebhookDeliveryConnection(
        edges=[
            w.WebhookDeliveryEdge(
                cursor=delivery_cursor(x.created_at, x.delivery_id), node=_delivery(x)
            )
            for x in page.items
        ],
        page_info=p.PageInfo(has_next_page=page.has_next_page, end_cursor=page.end_cursor),
        count=count,
    )
