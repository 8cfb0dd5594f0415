"""Review tests (rtrust2) of the deletion's own end of cancelled runs and the ends bus."""

from __future__ import annotations

from dataclasses import replace

import psycopg
import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.events import terminal_status
from code_hero.runs.executor import MultitaskStrategy, StartRun
from tests.runs.conftest import SLOW_SPEC
from tests.runs.test_deletes import wait_status


def _settings(url: str) -> GatewaySettings:
    return GatewaySettings(
        checkpointer=create_postgres_checkpointer(url, health_check_interval=0.2),
        graphs={"slow": SLOW_SPEC},
    )


@pytest.mark.postgres
async def test_the_operators_deletion_ends_a_run_a_crashed_replica_held(pg_database: str) -> None:
    # The usual reason for `code-hero threads delete` with no server up: a replica
    # died holding a run (its lease lapsed, lease_owner still set). stop_thread files it
    # under `remote` (a lease owner), sends a cancel nobody hears, and never calls
    # `_end_cancelled`: the one-shot gateway waits 5 s + a lease, then deletes the run
    # unended: its follower never sees CANCELLED.
    settings = replace(_settings(pg_database), claim_others=False)
    async with Gateway(settings) as gw:
        first = await gw.start_run(StartRun(graph="slow", input={"delay": 30}))
        held = await gw.start_run(
            StartRun(
                graph="slow",
                thread_id=first.thread_id,
                input={},
                multitask=MultitaskStrategy.ENQUEUE,
            )
        )
        await wait_status(gw, first.run_id, RunStatus.RUNNING)
        # A replica claimed the queued run, then died: its lease lapsed a minute ago.
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(
                "UPDATE code_hero_runs SET lease_owner = 'executor-dead', "
                "lease_expires_at = now() - interval '1 minute' WHERE run_id = %s",
                (held.run_id,),
            )
        heard = gw.bus.subscribe(thread_id=first.thread_id)
        try:
            gone = await gw.delete_thread(first.thread_id)
            ends: dict[str, RunStatus] = {}
            while not heard.queue.empty():
                event = heard.queue.get_nowait()
                status = terminal_status(event)
                if status is not None:
                    ends[event.run_id] = status
        finally:
            gw.bus.unsubscribe(heard)
    assert gone.deleted and gone.runs_deleted == 2
    assert ends == {first.run_id: RunStatus.CANCELLED, held.run_id: RunStatus.CANCELLED}
