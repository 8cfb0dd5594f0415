"""Every run a thread's deletion takes ends CANCELLED before it goes, on memory, SQLite
and PostgreSQL: its followers see that end (the bus carries it), not a stream that
stops short of it, however many runs wait on the thread; and where no claim loop would
end a queued run (a one-shot CLI gateway, a gateway shutting down), the deletion ends
it itself rather than wait a lease for nobody."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import psycopg
import pytest

from code_hero.config import CheckpointerConfig, create_postgres_checkpointer
from code_hero.errors import NotFoundError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.backends import open_backend
from code_hero.persistence.manager import ThreadDeletion
from code_hero.persistence.records import RunStatus
from code_hero.runs.bus import InProcessBus
from code_hero.runs.eventlog import EventLog
from code_hero.runs.events import terminal_status
from tests.runs.conftest import SLOW_SPEC
from tests.runs.test_deletes import running_and_queued


async def test_every_run_of_a_deleted_thread_ends_cancelled_before_it_goes(
    gateway: Gateway,
) -> None:
    first, queued = await running_and_queued(gateway, queued=10)
    gone, ends, overflowed = await _deleted(gateway, first.thread_id)
    assert gone.deleted and gone.runs_deleted == 11
    assert overflowed is False
    assert ends == {run.run_id: RunStatus.CANCELLED for run in [first, *queued]}


def _settings(url: str) -> GatewaySettings:
    return GatewaySettings(
        checkpointer=create_postgres_checkpointer(url, health_check_interval=0.2),
        graphs={"slow": SLOW_SPEC},
    )


async def _deleted(
    gw: Gateway, thread_id: str
) -> tuple[ThreadDeletion, dict[str, RunStatus], bool]:
    """The thread's deletion, the end each of its runs announced on the bus by then, and
    whether the bus dropped any of the thread's events (its queue overflowed)."""
    heard = gw.bus.subscribe(thread_id=thread_id)
    try:
        gone = await gw.delete_thread(thread_id)
        ends: dict[str, RunStatus] = {}
        while not heard.queue.empty():
            event = heard.queue.get_nowait()
            status = terminal_status(event)
            if status is not None:
                ends[event.run_id] = status
    finally:
        gw.bus.unsubscribe(heard)
    return gone, ends, heard.overflowed


@pytest.mark.postgres
async def test_a_deletion_as_shutdown_begins_ends_its_queued_runs_cancelled(
    pg_database: str,
) -> None:
    # A deleteThread in flight when the drain begins (claiming stopped, running runs
    # given their grace): no claim loop is left to end the thread's queued run here, so
    # the deletion ends it itself, CANCELLED, rather than wait 5 s + a lease for nobody.
    async with Gateway(_settings(pg_database)) as gw:
        first, (queued,) = await running_and_queued(gw)
        gw.executor.claims.stop_claiming()  # what executor.shutdown does first
        gone, ends, _ = await _deleted(gw, first.thread_id)
    assert gone.deleted and gone.runs_deleted == 2
    assert ends == {first.run_id: RunStatus.CANCELLED, queued.run_id: RunStatus.CANCELLED}


@pytest.mark.postgres
async def test_the_operators_deletion_ends_a_queued_run_cancelled(pg_database: str) -> None:
    # `code-hero threads delete` and `code-hero prune` run a one-shot gateway that claims
    # only the runs it started (claim_others=False), and no server replica may be up
    # (maintenance): the deletion ends the thread's queued run itself, CANCELLED.
    settings = replace(_settings(pg_database), claim_others=False)
    async with Gateway(settings) as gw:
        first, (queued,) = await running_and_queued(gw)
        gone, ends, _ = await _deleted(gw, first.thread_id)
    assert gone.deleted and gone.runs_deleted == 2
    assert ends == {first.run_id: RunStatus.CANCELLED, queued.run_id: RunStatus.CANCELLED}


@pytest.mark.postgres
async def test_the_operators_deletion_ends_a_run_a_crashed_replica_held(pg_database: str) -> None:
    # The usual reason for `code-hero threads delete` with no server up: a replica
    # died holding a run (its lease lapsed, lease_owner still set). Its cancel message
    # reaches nobody; the one-shot gateway ends it itself, as a claim loop would.
    settings = replace(_settings(pg_database), claim_others=False)
    async with Gateway(settings) as gw:
        first, (held,) = await running_and_queued(gw)
        # A replica claimed the queued run, then died: its lease lapsed a minute ago.
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(
                "UPDATE code_hero_runs SET lease_owner = 'executor-dead', "
                "lease_expires_at = now() - interval '1 minute' WHERE run_id = %s",
                (held.run_id,),
            )
        gone, ends, _ = await _deleted(gw, first.thread_id)
    assert gone.deleted and gone.runs_deleted == 2
    assert ends == {first.run_id: RunStatus.CANCELLED, held.run_id: RunStatus.CANCELLED}


@pytest.mark.postgres
async def test_a_deletion_whose_own_end_of_its_runs_fails_still_deletes(
    pg_database: str,
) -> None:
    # Ending the cancelled runs itself (the one-shot gateway) meets a passing error: the
    # deletion goes on as it did before it ended them (it waits for a claim loop, here a
    # short lease), it does not fail on that error.
    settings = replace(_settings(pg_database), claim_others=False, lease_seconds=1.0)
    async with Gateway(settings) as gw:
        # An async connection: DDL on code_hero_runs waits for the gateway's transactions
        # on it, which need this loop to end.
        async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as conn:
            await conn.execute("CREATE TABLE refused (run_id text PRIMARY KEY)")
            await conn.execute(
                """CREATE FUNCTION refuse_cancelled() RETURNS trigger LANGUAGE plpgsql AS $$
                   BEGIN
                       IF NEW.status = 'CANCELLED'
                          AND EXISTS (SELECT 1 FROM refused WHERE run_id = NEW.run_id) THEN
                           RAISE EXCEPTION 'refused' USING ERRCODE = '55P03';
                       END IF;
                       RETURN NEW;
                   END $$"""
            )
            await conn.execute(
                "CREATE TRIGGER refuse_cancelled BEFORE UPDATE ON code_hero_runs "
                "FOR EACH ROW EXECUTE FUNCTION refuse_cancelled()"
            )
            first, (queued,) = await running_and_queued(gw)
            await conn.execute("INSERT INTO refused VALUES (%s)", (queued.run_id,))
        gone = await gw.delete_thread(first.thread_id)
    assert gone.deleted and gone.runs_deleted == 2


async def test_a_follower_of_a_run_found_gone_on_the_in_process_bus_ends_at_once(
    backend_config: CheckpointerConfig,
) -> None:
    # The last look for an end's notification is for a bus that relays ends from other
    # replicas: in one process every end is published as it is recorded, so a run
    # found gone (an operator's purge from Python) ends its follower NOT_FOUND at once,
    # not after a recheck of silence (an hour here).
    async with open_backend(backend_config) as backend:
        log = EventLog(lambda: backend.registry, InProcessBus(), recheck_interval=3600)

        async def gone() -> RunStatus | None:
            return None

        with pytest.raises(NotFoundError, match="deleted before it ended"):
            async with asyncio.timeout(60):  # a hang, not a time: the recheck is an hour
                async for _ in log.follow_run("r-gone", status_of=gone):
                    pass
