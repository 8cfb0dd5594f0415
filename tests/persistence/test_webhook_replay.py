"""A run's end written twice (replayed, copied back) queues its webhook deliveries once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from code_hero.config import create_memory_checkpointer
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.entries import CopyThread, FinishRun
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from code_hero.persistence.webhooks import (
    RUN_WEBHOOK_KEY,
    DeliveryFilter,
    WebhookEvent,
    WebhookRecord,
)
from tests.conftest import make_config

RUN = "0d6f9e52-3b1c-4a7e-8f21-9c4b5a6d7e80"
HOOK = "https://hooks.example.com/account"
OWN = "https://hooks.example.com/own"


async def webhook(primary: Backend) -> None:
    """An account webhook of user u, told of succeeded runs."""
    record = WebhookRecord(
        "wh1", "u", HOOK, (WebhookEvent.RUN_SUCCEEDED,), datetime.now(UTC), thread_id="t"
    )
    await primary.registry.create_webhook(record, "whsec_c2VjcmV0")


async def deliveries(primary: Backend) -> list[tuple[str, str | None, str]]:
    page = await primary.registry.list_deliveries(DeliveryFilter(run_id=RUN), first=10)
    return sorted((d.delivery_id, d.webhook_id, d.url) for d in page.items)


@pytest.fixture(params=["sqlite", "postgres"])
def primary_config(request: pytest.FixtureRequest) -> object:
    return make_config(request.param, request)


async def test_a_run_born_and_ended_in_an_outage_is_announced_once(
    primary_config: object,
) -> None:
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now)
    ended = RunRecord(
        RUN,
        "t",
        "g",
        RunStatus.SUCCESS,
        created_at=now,
        finished_at=now,
        user_id="u",
        config={RUN_WEBHOOK_KEY: OWN},
    )
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,  # type: ignore[arg-type]
    ):
        await webhook(primary)
        await fallback.registry.put_thread(thread)
        await fallback.registry.put_run(ended)

        await CopyThread("t", {}).replay(primary, fallback)
        queued = await deliveries(primary)
        assert [(hook, url) for _, hook, url in queued] == [(None, OWN), ("wh1", HOOK)]

        # Copied again (a recovery replays an entry twice), on time and late: no more.
        await CopyThread("t", {}).replay(primary, fallback)
        await CopyThread("t", {}).late().replay(primary, fallback)
        assert await deliveries(primary) == queued


async def test_a_replayed_finish_queues_one_delivery_with_one_id(primary_config: object) -> None:
    now = datetime.now(UTC)
    async with open_backend(primary_config) as primary:  # type: ignore[arg-type]
        await webhook(primary)
        await primary.registry.put_thread(ThreadRecord("t", "u", ThreadStatus.BUSY, {}, now, now))
        await primary.registry.put_run(RunRecord(RUN, "t", "g", RunStatus.RUNNING, created_at=now))
        finish = FinishRun(RUN, "t", {"status": "SUCCESS", "finished_at": now})

        await finish.replay(primary, primary)
        (first,) = await deliveries(primary)
        await finish.replay(primary, primary)  # its acknowledgement was lost: sent again
        assert await deliveries(primary) == [first]

        # Even a run made to end a second time the same way keeps the one message.
        await primary.registry.update_run(RUN, status=RunStatus.RUNNING)
        await finish.replay(primary, primary)
        assert await deliveries(primary) == [first]
