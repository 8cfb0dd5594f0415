"""Webhooks through GraphQL, on SQLite and PostgreSQL: a real receiver on loopback.

Delivery is signed (verified with `standardwebhooks`), retried on the schedule,
never redirected, refused for private destinations, told only of the owner's
runs, and durable: a replica that claimed a delivery and died leaves it to
another, which delivers it once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from code_hero.app import create_app
from code_hero.auth import AuthSettings, parse_api_keys
from code_hero.config import CheckpointerConfig, create_postgres_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.runs import webhooks as dispatcher_module
from code_hero.runs.destinations import parse_allow_list
from code_hero.runs.webhooks import WebhookSettings
from code_hero.settings import AppSettings
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, with_port
from tests.graphql.clients import codes, data, gql
from tests.graphql.conftest import SLOW_GRAPH, Server, checkpointer_for, running
from tests.graphql.test_auth import ALICE_KEY, BOB_KEY, KEYS, ROOT_KEY
from tests.webhook_receiver import Receiver, receiver

CREATE = """mutation($input: CreateWebhookInput!) {
  createWebhook(input: $input) { secret webhook { id url events userId createdAt } }
}"""
START = """mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }"""
DELIVERIES = """query($webhookId: ID, $runId: ID, $status: DeliveryStatus, $after: String) {
  webhookDeliveries(webhookId: $webhookId, runId: $runId, status: $status, after: $after,
                    first: 10) {
    totalCount pageInfo { hasNextPage endCursor }
    edges { cursor node { id webhookId runId threadId event url status attempts
                          lastStatusCode lastError createdAt deliveredAt nextAttemptAt } }
  }
}"""
FAST = {"graph": "slow", "message": "hi", "config": {"delay": 0}, "wait": True}
PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432
RUN_SECRET = "whsec_" + "c2VjcmV0LW9mLXJ1bi13ZWJob29rcw=="  # base64 of 24 bytes


def fast_schedule(schedule: tuple[float, ...] = (0, 0.2, 0.4), **more: Any) -> WebhookSettings:
    return WebhookSettings(
        schedule=schedule,
        allow=more.pop("allow", parse_allow_list("127.0.0.1")),
        timeout=5,
        poll_interval=0.1,
        secret=RUN_SECRET,
        **more,
    )


@asynccontextmanager
async def webhook_server(
    checkpointer: CheckpointerConfig, webhooks: WebhookSettings | None = None
) -> AsyncIterator[Server]:
    """A gateway with alice, bob and root (admin) keys and the given webhook settings."""
    settings = AppSettings(
        gateway=GatewaySettings(
            checkpointer=checkpointer,
            graphs={"slow": SLOW_GRAPH},
            webhooks=webhooks or fast_schedule(),
        ),
        auth=AuthSettings(api_keys=parse_api_keys(KEYS)),
        graphiql=False,
    )
    async with running(create_app(settings)) as server:
        yield server


@asynccontextmanager
async def as_user(server: Server, key: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=20) as http:
        yield http


async def settled(
    http: httpx.AsyncClient, *, count: int = 1, **filters: Any
) -> list[dict[str, Any]]:
    """The deliveries matching `filters` once `count` of them are no longer PENDING."""
    async with asyncio.timeout(20):
        while True:
            page = data(await gql(http, DELIVERIES, filters))["webhookDeliveries"]
            nodes = [e["node"] for e in page["edges"]]
            if len([n for n in nodes if n["status"] != "PENDING"]) >= count:
                return nodes
            await asyncio.sleep(0.02)


async def health_becomes(http: httpx.AsyncClient, status: str) -> None:
    """Wait (bounded) for the health status; HEALTHY also waits for the sync-back."""
    async with asyncio.timeout(30):
        while True:
            health = data(await gql(http, "{ health { status pendingSync } }"))["health"]
            if health["status"] == status and (status != "HEALTHY" or not health["pendingSync"]):
                return
            await asyncio.sleep(0.05)


@pytest.fixture
def pg_database(pg_migrated_database: str) -> str:
    """A database of the test's own with the gateway's tables made (its migrations are
    not what these tests are about)."""
    return pg_migrated_database


@pytest.fixture
def checkpointer(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    return checkpointer_for(backend, request, tmp_path)


@pytest.fixture
async def hooks() -> AsyncIterator[Receiver]:
    async with receiver() as r:
        yield r


async def test_signed_delivery_verified_by_the_receiver_and_owner_isolation(
    checkpointer: CheckpointerConfig, hooks: Receiver
) -> None:
    async with (
        webhook_server(checkpointer) as server,
        as_user(server, ALICE_KEY) as alice,
        as_user(server, BOB_KEY) as bob,
    ):
        made = data(
            await gql(
                alice,
                CREATE,
                {"input": {"url": f"{hooks.url}/alice", "events": ["RUN_SUCCEEDED"]}},
            )
        )["createWebhook"]
        assert made["secret"].startswith("whsec_")
        assert made["webhook"]["userId"] == "alice"
        assert made["webhook"]["events"] == ["RUN_SUCCEEDED"]
        every = ["RUN_SUCCEEDED", "RUN_FAILED", "RUN_CANCELLED", "THREAD_DELETED"]
        bobs = data(
            await gql(bob, CREATE, {"input": {"url": f"{hooks.url}/bob", "events": every}})
        )["createWebhook"]["webhook"]

        run = data(await gql(alice, START, {"input": FAST}))["startRun"]
        assert run["status"] == "SUCCESS"
        (got,) = await hooks.wait_for("/alice")
        payload = Webhook(made["secret"]).verify(got.body, got.headers)
        assert payload["event"] == "RUN_SUCCEEDED"
        assert payload["runId"] == run["id"] and payload["threadId"] == run["threadId"]
        assert payload["status"] == "SUCCESS" and payload["finishedAt"]
        with pytest.raises(WebhookVerificationError):  # another secret does not verify it
            Webhook(RUN_SECRET).verify(got.body, got.headers)

        (delivery,) = await settled(alice, webhookId=made["webhook"]["id"])
        assert delivery["status"] == "DELIVERED" and delivery["attempts"] == 1
        assert delivery["lastStatusCode"] == 200 and delivery["deliveredAt"]
        assert delivery["id"] == got.headers["webhook-id"]
        assert delivery["runId"] == run["id"] and delivery["event"] == "RUN_SUCCEEDED"

        # Bob sees none of it and was told nothing: the outbox rows are written with
        # the run's end, so there is nothing of his to wait for.
        seen = data(await gql(bob, DELIVERIES, {}))["webhookDeliveries"]
        assert seen["totalCount"] == 0 and seen["edges"] == []
        listed = data(await gql(bob, "{ webhooks { id } }"))["webhooks"]
        assert listed == [{"id": bobs["id"]}]
        gone = data(
            await gql(
                bob,
                "mutation($id: ID!) { deleteWebhook(id: $id) }",
                {"id": made["webhook"]["id"]},
            )
        )
        assert gone["deleteWebhook"] is False
        foreign = await gql(bob, DELIVERIES, {"webhookId": made["webhook"]["id"]})
        assert data(foreign)["webhookDeliveries"]["totalCount"] == 0
        assert hooks.on("/bob") == []

        async with as_user(server, ROOT_KEY) as root:  # the admin sees every delivery
            everything = data(await gql(root, DELIVERIES, {}))["webhookDeliveries"]
            assert everything["totalCount"] == 1
        mine = data(
            await gql(
                alice,
                "mutation($id: ID!) { deleteWebhook(id: $id) }",
                {"id": made["webhook"]["id"]},
            )
        )
        assert mine["deleteWebhook"] is True
        assert data(await gql(alice, "{ webhooks { id } }"))["webhooks"] == []


async def test_a_receiver_that_fails_twice_gets_three_attempts(
    checkpointer: CheckpointerConfig, hooks: Receiver
) -> None:
    hooks.answers["/flaky"] = [500, 503]
    async with webhook_server(checkpointer) as server, as_user(server, ALICE_KEY) as alice:
        made = data(
            await gql(
                alice, CREATE, {"input": {"url": f"{hooks.url}/flaky", "events": ["RUN_SUCCEEDED"]}}
            )
        )["createWebhook"]
        data(await gql(alice, START, {"input": FAST}))
        (delivery,) = await settled(alice, webhookId=made["webhook"]["id"])
        assert delivery["status"] == "DELIVERED"
        assert delivery["attempts"] == 3 and delivery["lastStatusCode"] == 200
        tries = hooks.on("/flaky")
        assert len(tries) == 3
        assert len({t.headers["webhook-id"] for t in tries}) == 1  # one message, three tries
        for attempt in tries:
            Webhook(made["secret"]).verify(attempt.body, attempt.headers)


async def test_every_failed_attempt_is_recorded_then_failed(
    checkpointer: CheckpointerConfig, hooks: Receiver
) -> None:
    hooks.answers["/down"] = [500, 500, 500]
    async with webhook_server(checkpointer) as server, as_user(server, ALICE_KEY) as alice:
        data(
            await gql(
                alice, CREATE, {"input": {"url": f"{hooks.url}/down", "events": ["RUN_SUCCEEDED"]}}
            )
        )
        data(await gql(alice, START, {"input": FAST}))
        (delivery,) = await settled(alice)
        assert delivery["status"] == "FAILED" and delivery["attempts"] == 3
        assert delivery["lastStatusCode"] == 500 and delivery["lastError"] == "HTTP 500"
        assert delivery["nextAttemptAt"] is None and delivery["deliveredAt"] is None
        failed = data(await gql(alice, DELIVERIES, {"status": "FAILED"}))["webhookDeliveries"]
        assert failed["totalCount"] == 1


async def test_private_destinations_are_refused(
    checkpointer: CheckpointerConfig, hooks: Receiver
) -> None:
    async with webhook_server(checkpointer) as server, as_user(server, ALICE_KEY) as alice:
        for url in (
            "http://10.1.2.3/hook",
            "http://127.0.0.2:9/hook",  # loopback, but not the allow-listed address
            "http://169.254.169.254/latest/meta-data",
            "http://[fd00:ec2::254]/",
            "http://[::ffff:10.0.0.1]/",
            "ftp://example.com/hook",
            "not a url",
        ):
            body = await gql(alice, CREATE, {"input": {"url": url, "events": ["RUN_FAILED"]}})
            assert codes(body) == ["BAD_USER_INPUT"], url
        refused = await gql(alice, START, {"input": {**FAST, "webhook": "http://192.168.0.1/"}})
        assert codes(refused) == ["BAD_USER_INPUT"]
        assert data(await gql(alice, "{ webhooks { id } }"))["webhooks"] == []


async def test_a_filter_field_deliveries_are_not_matched_on_is_refused(
    checkpointer: CheckpointerConfig, hooks: Receiver
) -> None:
    """RunFilter's fields for listing runs (metadata, statuses, createdAfter/Before) are
    not matched by deliveries: given to createWebhook they were ignored, and every run's
    events delivered (found by an outside audit). Refused, naming them; nothing made."""
    async with webhook_server(checkpointer) as server, as_user(server, ALICE_KEY) as alice:
        url = f"{hooks.url}/h"
        for flt, named in (
            ({"metadata": 5}, "metadata"),
            ({"metadata": {"team": "x"}}, "metadata"),
            ({"statuses": ["SUCCESS"], "graph": "slow"}, "statuses"),
            ({"createdAfter": "2026-01-01T00:00:00Z"}, "createdAfter"),
        ):
            body = await gql(
                alice, CREATE, {"input": {"url": url, "events": ["RUN_SUCCEEDED"], "filter": flt}}
            )
            assert codes(body) == ["BAD_USER_INPUT"], flt
            assert named in body["errors"][0]["message"], body
        # Another user's runs, as in a listing's filter (an outside audit): FORBIDDEN.
        other = await gql(
            alice,
            CREATE,
            {"input": {"url": url, "events": ["RUN_SUCCEEDED"], "filter": {"userId": "bob"}}},
        )
        assert codes(other) == ["FORBIDDEN"], other
        assert data(await gql(alice, "{ webhooks { id } }"))["webhooks"] == []
        made = await gql(
            alice,
            CREATE,
            {"input": {"url": url, "events": ["RUN_SUCCEEDED"], "filter": {"graph": "slow"}}},
        )
        assert data(made)["createWebhook"]["webhook"]["id"]


async def test_a_host_name_resolving_to_loopback_is_refused_at_delivery(
    checkpointer: CheckpointerConfig, hooks: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = hooks.url.rsplit(":", 1)[1]
    # A name the resolver answers with loopback, as an internal DNS name would.
    resolved = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hooks.sneaky.test":
            return resolved("127.0.0.1", *args, **kwargs)
        return resolved(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    settings = fast_schedule((0,), allow=())  # nothing allow-listed
    async with (
        webhook_server(checkpointer, settings) as server,
        as_user(server, ALICE_KEY) as alice,
    ):
        url = f"http://hooks.sneaky.test:{port}/sneaky"  # a name: checked when resolved
        data(await gql(alice, CREATE, {"input": {"url": url, "events": ["RUN_SUCCEEDED"]}}))
        data(await gql(alice, START, {"input": FAST}))
        (delivery,) = await settled(alice)
        assert delivery["status"] == "FAILED" and delivery["attempts"] == 1
        assert delivery["lastStatusCode"] is None
        assert "refused destination" in delivery["lastError"]
        assert hooks.on("/sneaky") == []


async def test_a_redirect_is_not_followed(
    checkpointer: CheckpointerConfig, hooks: Receiver
) -> None:
    hooks.answers["/moved"] = [307]
    async with (
        webhook_server(checkpointer, fast_schedule((0,))) as server,
        as_user(server, ALICE_KEY) as alice,
    ):
        url = f"{hooks.url}/moved"
        data(await gql(alice, CREATE, {"input": {"url": url, "events": ["RUN_SUCCEEDED"]}}))
        data(await gql(alice, START, {"input": FAST}))
        (delivery,) = await settled(alice)
        assert delivery["status"] == "FAILED" and delivery["lastStatusCode"] == 307
        assert "not followed" in delivery["lastError"]
        assert len(hooks.on("/moved")) == 1 and hooks.on("/elsewhere") == []


async def test_a_runs_own_webhook(checkpointer: CheckpointerConfig, hooks: Receiver) -> None:
    async with (
        webhook_server(checkpointer) as server,
        as_user(server, ALICE_KEY) as alice,
        as_user(server, BOB_KEY) as bob,
    ):
        run = data(await gql(alice, START, {"input": {**FAST, "webhook": f"{hooks.url}/run"}}))[
            "startRun"
        ]
        (got,) = await hooks.wait_for("/run")
        payload = Webhook(RUN_SECRET).verify(got.body, got.headers)  # the server's secret
        assert payload["runId"] == run["id"] and payload["event"] == "RUN_SUCCEEDED"
        (delivery,) = await settled(alice, runId=run["id"])
        assert delivery["webhookId"] is None and delivery["url"] == f"{hooks.url}/run"
        assert delivery["status"] == "DELIVERED"
        seen = data(await gql(bob, DELIVERIES, {"runId": run["id"]}))["webhookDeliveries"]
        assert seen["totalCount"] == 0
        # A run without a webhook of its own tells no one.
        data(await gql(alice, START, {"input": {**FAST, "threadId": run["threadId"]}}))
        total = data(await gql(alice, DELIVERIES, {}))["webhookDeliveries"]["totalCount"]
        assert total == 1


async def test_the_http_client_is_made_for_the_first_delivery(
    checkpointer: CheckpointerConfig, hooks: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its TLS context (the CA bundle, ~2 MiB resident) costs only a server that delivers."""
    made: list[dict[str, Any]] = []

    class Counted(httpx.AsyncClient):
        def __init__(self, **options: Any) -> None:
            if sys._getframe(1).f_globals["__name__"] == dispatcher_module.__name__:
                made.append(options)  # the dispatcher's, not the test's own clients
            super().__init__(**options)

    # The dispatcher imports httpx at its first attempt: the class is patched where it is.
    monkeypatch.setattr(httpx, "AsyncClient", Counted)
    async with webhook_server(checkpointer) as server, as_user(server, ALICE_KEY) as alice:
        data(await gql(alice, START, {"input": FAST}))  # nothing to deliver
        assert made == []
        run = data(await gql(alice, START, {"input": {**FAST, "webhook": f"{hooks.url}/run"}}))
        await hooks.wait_for("/run")
        (delivery,) = await settled(alice, runId=run["startRun"]["id"])
        assert delivery["status"] == "DELIVERED"
        assert len(made) == 1 and made[0]["trust_env"] is False


async def test_a_runs_own_webhook_needs_the_servers_secret(
    checkpointer: CheckpointerConfig, hooks: Receiver
) -> None:
    async with (
        webhook_server(checkpointer, replace(fast_schedule(), secret=None)) as server,
        as_user(server, ALICE_KEY) as alice,
    ):
        answer = await gql(alice, START, {"input": {**FAST, "webhook": f"{hooks.url}/run"}})
        assert codes(answer) == ["BAD_USER_INPUT"]
        assert "CODE_HERO_WEBHOOK_SECRET" in answer["errors"][0]["message"]
        assert hooks.on("/run") == []


async def test_thread_deleted(checkpointer: CheckpointerConfig, hooks: Receiver) -> None:
    async with (
        webhook_server(checkpointer) as server,
        as_user(server, ALICE_KEY) as alice,
        as_user(server, BOB_KEY) as bob,
    ):
        url = f"{hooks.url}/deleted"
        made = data(
            await gql(alice, CREATE, {"input": {"url": url, "events": ["THREAD_DELETED"]}})
        )["createWebhook"]
        data(await gql(bob, CREATE, {"input": {"url": f"{url}-bob", "events": ["THREAD_DELETED"]}}))
        run = data(await gql(alice, START, {"input": FAST}))["startRun"]
        deleted = await gql(
            alice,
            "mutation($id: ID!) { deleteThread(id: $id) { deleted } }",
            {"id": run["threadId"]},
        )
        assert data(deleted)["deleteThread"]["deleted"] is True
        (got,) = await hooks.wait_for("/deleted")
        payload = Webhook(made["secret"]).verify(got.body, got.headers)
        assert payload == {**payload, "event": "THREAD_DELETED", "threadId": run["threadId"]}
        (delivery,) = await settled(alice)
        assert delivery["event"] == "THREAD_DELETED" and delivery["runId"] is None
        assert data(await gql(bob, DELIVERIES, {}))["webhookDeliveries"]["totalCount"] == 0


async def test_deliveries_page_with_keyset_cursors(
    checkpointer: CheckpointerConfig, hooks: Receiver
) -> None:
    async with webhook_server(checkpointer) as server, as_user(server, ALICE_KEY) as alice:
        url = f"{hooks.url}/pages"
        data(await gql(alice, CREATE, {"input": {"url": url, "events": ["RUN_SUCCEEDED"]}}))
        for _ in range(3):
            data(await gql(alice, START, {"input": FAST}))
        query = """query($after: String) { webhookDeliveries(first: 2, after: $after) {
          totalCount pageInfo { hasNextPage endCursor } edges { node { id runId } } } }"""
        first = data(await gql(alice, query, {}))["webhookDeliveries"]
        assert first["totalCount"] == 3 and first["pageInfo"]["hasNextPage"]
        after = first["pageInfo"]["endCursor"]
        rest = data(await gql(alice, query, {"after": after}))["webhookDeliveries"]
        assert not rest["pageInfo"]["hasNextPage"]
        ids = [e["node"]["id"] for e in first["edges"] + rest["edges"]]
        assert len(set(ids)) == 3
        bad = await gql(alice, query, {"after": "nonsense"})
        assert codes(bad) == ["BAD_USER_INPUT"]
        # Priced as the cost limit prices lists: a user's most webhooks, and a full page.
        priced = await gql(
            alice,
            "{ webhooks { id } webhookDeliveries(first: 50) { totalCount edges { node { id } } } }",
        )
        assert priced["extensions"]["cost"] == 100 + (1 + 1 + 50 + 50)


@pytest.mark.postgres
async def test_a_replica_that_claimed_and_died_leaves_the_delivery_to_another(
    pg_database: str, hooks: Receiver
) -> None:
    def config() -> CheckpointerConfig:
        return create_postgres_checkpointer(pg_database, pool_min_size=1, pool_max_size=4)

    async with webhook_server(config()) as first, as_user(first, ALICE_KEY) as alice:
        await first.gateway.services.webhooks.close()  # this replica will claim, then "die"
        made = data(
            await gql(
                alice, CREATE, {"input": {"url": f"{hooks.url}/once", "events": ["RUN_SUCCEEDED"]}}
            )
        )["createWebhook"]
        data(await gql(alice, START, {"input": FAST}))
        store = first.gateway.services.webhook_store()
        assert store is not None
        now = datetime.now(UTC)
        (claimed,) = (
            await store.claim_deliveries(
                "dead-replica", now=now, until=now + timedelta(seconds=0.5), limit=10
            )
        ).deliveries
        assert claimed.webhook_id == made["webhook"]["id"]
        async with webhook_server(config()) as second, as_user(second, ALICE_KEY) as alice2:
            (got,) = await hooks.wait_for("/once")
            Webhook(made["secret"]).verify(got.body, got.headers)
            (delivery,) = await settled(alice2)
            assert delivery["status"] == "DELIVERED" and delivery["attempts"] == 1
            assert len(hooks.on("/once")) == 1
        # The dead replica's late report changes nothing: it no longer holds the lease.
        recorded = await store.record_attempt(
            claimed.delivery_id,
            "dead-replica",
            status=claimed.status,
            status_code=None,
            error="late",
            next_attempt_at=None,
            at=datetime.now(UTC),
        )
        assert recorded is False
        assert json.loads(claimed.payload)["event"] == "RUN_SUCCEEDED"


async def test_an_attempt_is_bounded_as_a_whole(checkpointer: CheckpointerConfig) -> None:
    """A receiver that trickles its answer's head a byte at a time: each read comes in
    time, the attempt does not, and it ends at the timeout, recorded."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            for byte in b"HTTP/1.1 200 OK\r\nx-slow: " + b"z" * 200:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            pass
        writer.close()

    slow = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = slow.sockets[0].getsockname()[1]
    settings = replace(fast_schedule((0,)), timeout=0.5)
    try:
        async with (
            webhook_server(checkpointer, settings) as server,
            as_user(server, ALICE_KEY) as alice,
        ):
            url = f"http://127.0.0.1:{port}/slow"
            data(await gql(alice, CREATE, {"input": {"url": url, "events": ["RUN_SUCCEEDED"]}}))
            data(await gql(alice, START, {"input": FAST}))
            (delivery,) = await settled(alice)
            assert delivery["status"] == "FAILED" and delivery["attempts"] == 1
            assert delivery["lastError"] == "timed out after 0.5 s"
    finally:
        slow.close()


@pytest.mark.postgres
async def test_a_run_born_and_ended_in_an_outage_is_delivered_once_after_it(
    pg_database: str, hooks: Receiver
) -> None:
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port), pool_timeout=1, health_check_interval=0.2
        )
        async with webhook_server(config) as server, as_user(server, ALICE_KEY) as alice:
            made = data(
                await gql(
                    alice,
                    CREATE,
                    {"input": {"url": f"{hooks.url}/outage", "events": ["RUN_SUCCEEDED"]}},
                )
            )["createWebhook"]
            proxy.refuse()
            await health_becomes(alice, "DEGRADED")
            # A new thread, started and ended on the fallback: its run is local to it.
            run = data(await gql(alice, START, {"input": FAST}))["startRun"]
            assert run["status"] == "SUCCESS"
            proxy.forward()
            await health_becomes(alice, "HEALTHY")

            (got,) = await hooks.wait_for("/outage")
            payload = Webhook(made["secret"]).verify(got.body, got.headers)
            assert payload["runId"] == run["id"] and payload["event"] == "RUN_SUCCEEDED"
            (delivery,) = await settled(alice, webhookId=made["webhook"]["id"])
            assert delivery["status"] == "DELIVERED" and delivery["attempts"] == 1
            assert delivery["id"] == got.headers["webhook-id"]
            assert len(hooks.on("/outage")) == 1


async def test_finished_deliveries_are_swept_after_their_retention(
    checkpointer: CheckpointerConfig, hooks: Receiver
) -> None:
    hooks.answers["/later"] = [500]
    settings = fast_schedule((0, 3600), retention=0.05)
    async with webhook_server(checkpointer, settings) as server, as_user(server, ROOT_KEY) as root:
        for path, events in (("/done", ["RUN_SUCCEEDED", "THREAD_DELETED"]), ("/later", None)):
            variables = {
                "input": {"url": f"{hooks.url}{path}", "events": events or ["RUN_SUCCEEDED"]}
            }
            data(await gql(root, CREATE, variables))
        run = data(await gql(root, START, {"input": {**FAST, "webhook": f"{hooks.url}/run"}}))
        deleted = await gql(
            root,
            "mutation($id: ID!) { deleteThread(id: $id) { deleted } }",
            {"id": run["startRun"]["threadId"]},
        )
        assert data(deleted)["deleteThread"]["deleted"] is True
        await hooks.wait_for("/done", 2)  # the run's end and the thread's deletion
        await hooks.wait_for("/run")
        await hooks.wait_for("/later")  # answered 500: PENDING, tried again in an hour
        nodes = await settled(root, count=3)
        assert len(nodes) == 4  # they outlived the thread

        await asyncio.sleep(0.1)  # past the retention
        assert await server.gateway.sweep_expired() == []
        (kept,) = data(await gql(root, DELIVERIES, {}))["webhookDeliveries"]["edges"]
        assert kept["node"]["status"] == "PENDING" and kept["node"]["url"].endswith("/later")
