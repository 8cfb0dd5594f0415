"""The cap on a user's webhooks holds under concurrent createWebhook calls, on SQLite and
PostgreSQL: the count and the insert are one step (it was a count, then an insert)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from code_hero.auth import Caller
from code_hero.config import CheckpointerConfig, create_postgres_checkpointer
from code_hero.errors import ConflictError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.registry.outbox import WEBHOOK_CAP_LOCK
from code_hero.persistence.webhooks import WebhookEvent
from code_hero.webhook_access import MAX_WEBHOOKS_PER_USER
from tests.conftest import make_config

ADA = Caller(user_id="ada")
URL = "https://hooks.example.com/in"
COPIED = (
    "user_id, all_users, url, events, secret, filter_thread_id, filter_status, "
    "filter_graph, filter_user_id, created_at"
)


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    return make_config(request.param, request)


async def test_concurrent_creations_stop_at_the_cap(store_config: CheckpointerConfig) -> None:
    async with Gateway(GatewaySettings(checkpointer=store_config)) as gw:
        events = [WebhookEvent.RUN_SUCCEEDED]
        for _ in range(MAX_WEBHOOKS_PER_USER - 2):
            await gw.create_webhook(URL, events, caller=ADA)

        results = await asyncio.gather(
            *(gw.create_webhook(URL, events, caller=ADA) for _ in range(10)),
            return_exceptions=True,
        )

        made = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, ConflictError)]
        assert (len(made), len(refused)) == (2, 8), results
        assert len(await gw.list_webhooks(caller=ADA)) == MAX_WEBHOOKS_PER_USER
        admin = Caller(user_id="root", is_admin=True)  # administrators have no cap
        await gw.create_webhook(URL, events, caller=admin)


async def test_a_creation_committing_meanwhile_is_counted(pg_database: str) -> None:
    """Another replica's createWebhook, between its insert and its commit, when this one
    counts: this one waits for it and is refused (the count no longer misses it)."""
    config = create_postgres_checkpointer(pg_database)
    async with Gateway(GatewaySettings(checkpointer=config)) as gw:
        events = [WebhookEvent.RUN_SUCCEEDED]
        first = await gw.create_webhook(URL, events, caller=ADA)
        for _ in range(MAX_WEBHOOKS_PER_USER - 2):
            await gw.create_webhook(URL, events, caller=ADA)
        store = gw.services.webhook_store()
        assert store is not None
        async with await psycopg.AsyncConnection.connect(pg_database) as other:
            if store.webhook_cap_lock is not None:  # what a creation takes first
                lock = store.webhook_cap_lock.replace("?", "%s")
                await other.execute(lock, [WEBHOOK_CAP_LOCK, "ada"])
            await other.execute(
                f"INSERT INTO code_hero_webhooks (webhook_id, {COPIED}) SELECT 'w-other', "
                f"{COPIED} FROM code_hero_webhooks WHERE webhook_id = %s",
                [first.webhook.webhook_id],
            )
            creation = asyncio.create_task(gw.create_webhook(URL, events, caller=ADA))
            await asyncio.sleep(0.5)
            await other.commit()

        with pytest.raises(ConflictError):
            await creation
        assert len(await gw.list_webhooks(caller=ADA)) == MAX_WEBHOOKS_PER_USER
