"""A primary reopened while the webhook worker sleeps: runs ending here are delivered at once.

The worker listens for this process's enqueues on the registry object it last
claimed from (`on_enqueue`, registered at each claim). A SQLite primary whose file
was deleted is closed and opened anew at its path by a later probe: a new registry
object, with no listener. The worker sleeps up to its cap: unless the recovery wakes
it (`Services._on_recovered`), a run that ends on this replica after it waits that
long for its delivery, although "the replica that ends a run starts delivering at
once" (README).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from code_hero.config import create_sqlite_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence import clock
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from code_hero.persistence.webhooks import RUN_WEBHOOK_KEY
from code_hero.runs.destinations import parse_allow_list
from code_hero.runs.webhooks import WebhookSettings
from tests.webhook_receiver import receiver

SECRET = "whsec_" + "c2VjcmV0LW9mLXJ1bi13ZWJob29rcw=="


async def test_a_run_ending_after_the_primary_was_reopened_is_delivered_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    config = create_sqlite_checkpointer(str(path), health_check_interval=3600)
    webhooks = WebhookSettings(allow=parse_allow_list("127.0.0.1"), secret=SECRET, idle_poll=3600)
    gateway = Gateway(GatewaySettings(checkpointer=config, webhooks=webhooks))
    waits: asyncio.Queue[float] = asyncio.Queue()
    worker = gateway.services.webhooks
    default_wait = worker._wait

    async def wait(wake: asyncio.Event, seconds: float) -> None:
        waits.put_nowait(seconds)  # the worker is asleep from here on
        await default_wait(wake, seconds)

    worker._wait = wait
    async with receiver() as hooks, gateway:
        async with asyncio.timeout(20):  # a guard against a hang
            assert await waits.get() == 3600  # claimed once, nothing PENDING: asleep
        before = gateway.services.webhook_store()
        manager = gateway.services.manager
        path.unlink()
        assert (await manager.health_check())["overall_status"] == "degraded"
        assert (await manager.health_check())["overall_status"] == "healthy"
        store = gateway.services.webhook_store()
        assert store is not None and store is not before  # the primary, opened anew
        now = clock.now()
        await store.put_thread(ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now))
        run = RunRecord(
            "0d6f9e52-3b1c-4a7e-8f21-9c4b5a6d7e80",
            "t",
            "g",
            RunStatus.SUCCESS,
            created_at=now,
            finished_at=now,
            user_id="u",
            config={RUN_WEBHOOK_KEY: f"{hooks.url}/own"},
        )
        await store.put_run(run, announce=True)  # this replica ends a run
        # Woken at once, as before the file was deleted (the guard is 20 s, the cap 1 h).
        assert len(await hooks.wait_for("/own")) == 1
