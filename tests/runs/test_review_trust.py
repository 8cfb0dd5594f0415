"""Review of the trust branch: a deletion's promised CANCELLED end, seen from another replica.

Two gateways on one PostgreSQL database are two replicas: the run executes on A, a
subscriber follows it through B (whose bus relays A's events by reading the rows once
notified), and A deletes the thread. The deletion waits for the run's end to be
recorded, not for B to have relayed it: a relay that reads after the deletion finds
no rows, and B's subscriber ends NOT_FOUND instead of seeing CANCELLED.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.errors import NotFoundError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import EventRecord, RunStatus
from code_hero.runs.events import terminal_status
from code_hero.runs.executor import StartRun
from tests.runs.conftest import SLOW_SPEC
from tests.runs.test_deletes import wait_status

pytestmark = pytest.mark.postgres


def _settings(url: str) -> GatewaySettings:
    return GatewaySettings(
        checkpointer=create_postgres_checkpointer(url, health_check_interval=0.2),
        graphs={"slow": SLOW_SPEC},
    )


async def test_a_follower_on_another_replica_sees_the_cancelled_end_of_a_deletion(
    pg_database: str,
) -> None:
    async with Gateway(_settings(pg_database)) as a:
        run = await a.start_run(StartRun(graph="slow", input={"delay": 30}))
        await wait_status(a, run.run_id, RunStatus.RUNNING)
        assert a.executor.is_active(run.run_id)  # A executes it; B only relays
        async with Gateway(_settings(pg_database)) as b:
            seen: list[EventRecord] = []
            outcome: list[Any] = []
            heard_running = asyncio.Event()

            async def follow() -> None:
                try:
                    async for event in await b.follow_run(run.run_id):
                        seen.append(event)
                        if event.payload.get("status") == "RUNNING":
                            heard_running.set()
                    outcome.append("completed")
                except NotFoundError as exc:
                    outcome.append(exc)

            follower = asyncio.create_task(follow())
            async with asyncio.timeout(30):
                await heard_running.wait()
            # B's relay reads share its pool with its runs: here they are all taken (a
            # busy replica) while A deletes the thread.
            relay_reads = b.bus._relay_reads  # type: ignore[attr-defined]
            held = 0
            while not relay_reads.locked():
                await relay_reads.acquire()
                held += 1
            try:
                gone = await a.delete_thread(run.thread_id)
            finally:
                for _ in range(held):
                    relay_reads.release()
            assert gone.deleted
            async with asyncio.timeout(30):
                await follower
    ends = [terminal_status(e) for e in seen if terminal_status(e) is not None]
    assert outcome == ["completed"], f"B's follower ended with {outcome!r}, not CANCELLED"
    assert ends == [RunStatus.CANCELLED]
