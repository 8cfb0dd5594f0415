"""A follower on another replica sees the CANCELLED end of a run its thread's deletion took.

Two gateways on one PostgreSQL database are two replicas: the run executes on A, a
subscriber follows it through B (whose bus relays A's events by reading the rows once
notified), and A deletes the thread. The deletion waits for the run's end to be
recorded, not for B to have relayed it: a relay that reads after the deletion finds
no rows. The end's notification carries the end itself (`ENDS_CHANNEL`), so B's
subscriber sees CANCELLED, not NOT_FOUND.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.errors import NotFoundError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import EventRecord, RunStatus
from code_hero.runs.events import EventType, terminal_status
from code_hero.runs.executor import StartRun
from code_hero.runs.pgbus import _end_note, _end_of
from tests.runs.conftest import SLOW_SPEC
from tests.runs.test_deletes import wait_status


def _settings(url: str) -> GatewaySettings:
    return GatewaySettings(
        checkpointer=create_postgres_checkpointer(url, health_check_interval=0.2),
        graphs={"slow": SLOW_SPEC},
        event_recheck_interval=0.2,
    )


@pytest.mark.postgres
@pytest.mark.parametrize("relay_held", ["through the deletion", "until the follower ends"])
async def test_a_follower_on_another_replica_sees_the_cancelled_end_of_a_deletion(
    pg_database: str, relay_held: str
) -> None:
    # Held through the deletion, B's relay reads after it: no rows, the end as notified.
    # Held until the follower ends, the relay never reads: the follower, finding the run
    # gone at its recheck, takes the end the bus heard (`end_of`).
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
                if relay_held == "until the follower ends":
                    async with asyncio.timeout(30):
                        await asyncio.wait([follower])
            finally:
                for _ in range(held):
                    relay_reads.release()
            assert gone.deleted
            async with asyncio.timeout(30):
                await follower
    ends = [terminal_status(e) for e in seen if terminal_status(e) is not None]
    assert outcome == ["completed"], f"B's follower ended with {outcome!r}, not CANCELLED"
    assert ends == [RunStatus.CANCELLED]


def test_an_end_with_a_long_error_fits_a_notification() -> None:
    end = EventRecord(
        "run-1",
        "thread-1",
        7,
        EventType.STATUS.value,
        {"status": RunStatus.ERROR.value, "error": "x" * 100_000},
        datetime.now(UTC),
    )
    note = _end_note(end)
    assert note is not None and len(note.encode()) < 8000
    heard = _end_of(note)
    assert terminal_status(heard) is RunStatus.ERROR
    assert (heard.run_id, heard.thread_id, heard.seq, heard.at) == ("run-1", "thread-1", 7, end.at)
    assert str(heard.payload["error"]).startswith("xxx")
