"""Webhooks as the gateway offers them: who creates, lists and deletes which.

`WebhookAccess` is a part of `Gateway` (a base class, so the gateway's own
module stays about threads and runs). A webhook belongs to the user who made
it and is told only of runs on that user's threads; an administrator's
webhook is told of every user's runs. A user lists and deletes only its own
webhooks and sees only its deliveries (those of its webhooks, and those to
the `webhook` URL of runs on its threads); an administrator sees all. A
webhook of another user looks exactly like a missing one.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from code_hero.auth import ANONYMOUS, AccessPolicy, Action, Caller
from code_hero.checkpoint_access import check_first
from code_hero.compose import Services
from code_hero.errors import BadInputError, ConflictError
from code_hero.inputs import check_run_id, check_text, check_thread_id, check_webhook_id
from code_hero.persistence import clock
from code_hero.persistence.records import Page, RunFilter
from code_hero.persistence.webhooks import (
    DeliveryFilter,
    DeliveryRecord,
    DeliveryStatus,
    WebhookEvent,
    WebhookRecord,
    WebhookStore,
)
from code_hero.runs.destinations import check_url

__all__ = ["MAX_WEBHOOKS_PER_USER", "NewWebhook", "WebhookAccess"]

# Webhooks one user may have: a run's end writes one outbox row per match, and the
# `webhooks` list is priced at this many items (schema/cost.py).
MAX_WEBHOOKS_PER_USER = 100
_SECRET_BYTES = 24  # of a signing secret: 192 bits, as the Standard Webhooks examples use


@dataclass(frozen=True)
class NewWebhook:
    """A webhook just made, with its signing secret (shown this once)."""

    webhook: WebhookRecord
    secret: str


def new_secret() -> str:
    """A signing secret as the Standard Webhooks libraries take it: `whsec_` + base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


class WebhookAccess:
    """The gateway's webhook methods (mixed into `Gateway`)."""

    services: Services
    policy: AccessPolicy

    def _user_for(self, caller: Caller, named: str | None) -> str | None:
        raise NotImplementedError  # provided by Gateway

    @asynccontextmanager
    async def _webhooks(self) -> AsyncIterator[WebhookStore]:
        """The webhook store, which lives in the primary database only: its failures are
        judged as those of any call on the primary (`FallbackRouter.on_primary`)."""
        router = self.services.manager.router
        store = self.services.webhook_store()
        if store is None:
            raise router.unavailable("this webhook request")
        async with router.on_primary("this webhook request"):
            yield store

    def check_webhook_url(self, url: str, name: str = "url") -> str:
        """An http(s) URL with no refused literal address (BAD_USER_INPUT otherwise)."""
        check_text(url, name)
        try:
            return check_url(url, self.services.settings.webhooks.allow)
        except BadInputError as exc:
            raise BadInputError(f"{name}: {exc}") from None

    def check_run_webhook(self, url: str) -> str:
        """A run's own URL: checked, and signed like any delivery (never sent unsigned)."""
        if self.services.settings.webhooks.secret is None:
            raise BadInputError(
                "webhook: this server signs a run's own webhook with CODE_HERO_WEBHOOK_SECRET, "
                "which its operator has not set; register one with createWebhook instead"
            )
        return self.check_webhook_url(url, "webhook")

    async def create_webhook(
        self,
        url: str,
        events: Sequence[WebhookEvent],
        flt: RunFilter | None = None,
        *,
        caller: Caller = ANONYMOUS,
    ) -> NewWebhook:
        """Register a webhook of the caller's; the answer holds its secret, never shown again."""
        self.policy.spend(caller, Action.WEBHOOK_CREATE)
        url = self.check_webhook_url(url)
        if not events:
            raise BadInputError("events must name at least one event")
        flt = flt or RunFilter()
        # A delivery is matched on threadId, status, graph and userId (columns of the
        # webhook's row); a field of runs' listings given here was ignored, and every
        # run's events delivered.
        unmatched = [
            name
            for name, value in (
                ("statuses", flt.statuses),
                ("metadata", flt.metadata),
                ("createdAfter", flt.created_after),
                ("createdBefore", flt.created_before),
            )
            if value is not None
        ]
        if unmatched:
            raise BadInputError(
                f"a webhook's filter takes threadId, status, graph and userId only, not "
                f"{', '.join(unmatched)} (those filter listings of runs)"
            )
        if flt.thread_id is not None:
            check_thread_id(flt.thread_id, "filter.threadId")
        check_text(flt.graph, "filter.graph")
        check_text(flt.user_id, "filter.userId")
        if flt.user_id is not None:
            self._user_for(caller, flt.user_id)  # FORBIDDEN naming another, as in listings
        await self.policy.require(caller, Action.WEBHOOK_CREATE, value={"url": url})
        webhook = WebhookRecord(
            webhook_id=str(uuid.uuid4()),
            user_id=caller.user_id,
            url=url,
            events=tuple(dict.fromkeys(WebhookEvent(e) for e in events)),
            created_at=clock.now(),
            all_users=caller.is_admin,
            thread_id=flt.thread_id,
            status=flt.status,
            graph=flt.graph,
            run_user_id=flt.user_id,
        )
        secret = new_secret()
        limit = None if caller.is_admin else MAX_WEBHOOKS_PER_USER
        async with self._webhooks() as store:
            created = await store.create_webhook(webhook, secret, limit=limit)
        if not created:
            raise ConflictError(
                f"a user may have at most {MAX_WEBHOOKS_PER_USER} webhooks: delete one first"
            )
        return NewWebhook(webhook, secret)

    async def delete_webhook(self, webhook_id: str, *, caller: Caller = ANONYMOUS) -> bool:
        """Delete one of the caller's webhooks and its deliveries; False when there is none."""
        self.policy.spend(caller, Action.WEBHOOK_DELETE)
        webhook_id = check_webhook_id(webhook_id, "id")
        await self.policy.require(caller, Action.WEBHOOK_DELETE, value={"id": webhook_id})
        owner = None if caller.is_admin else caller.user_id
        async with self._webhooks() as store:
            return await store.delete_webhook(webhook_id, user_id=owner)

    async def list_webhooks(self, *, caller: Caller = ANONYMOUS) -> list[WebhookRecord]:
        """The caller's webhooks (an administrator: everyone's), oldest first."""
        owner = None if caller.is_admin else caller.user_id
        async with self._webhooks() as store:
            return await store.list_webhooks(user_id=owner)

    def _delivery_filter(
        self,
        caller: Caller,
        webhook_id: str | None,
        run_id: str | None,
        status: DeliveryStatus | None,
    ) -> DeliveryFilter:
        return DeliveryFilter(
            user_id=None if caller.is_admin else caller.user_id,
            webhook_id=(None if webhook_id is None else check_webhook_id(webhook_id)),
            run_id=None if run_id is None else check_run_id(run_id, "runId"),
            status=status,
        )

    async def webhook_deliveries(
        self,
        *,
        first: int = 20,
        after: str | None = None,
        webhook_id: str | None = None,
        run_id: str | None = None,
        status: DeliveryStatus | None = None,
        caller: Caller = ANONYMOUS,
    ) -> Page[DeliveryRecord]:
        """A page of the caller's deliveries, newest first."""
        check_first(first, self.services.settings.max_page)
        flt = self._delivery_filter(caller, webhook_id, run_id, status)
        async with self._webhooks() as store:
            return await store.list_deliveries(flt, first=first, after=after)

    async def webhook_deliveries_count(
        self,
        *,
        webhook_id: str | None = None,
        run_id: str | None = None,
        status: DeliveryStatus | None = None,
        caller: Caller = ANONYMOUS,
    ) -> int:
        """How many of the caller's deliveries match."""
        flt = self._delivery_filter(caller, webhook_id, run_id, status)
        async with self._webhooks() as store:
            return await store.count_deliveries(flt)
