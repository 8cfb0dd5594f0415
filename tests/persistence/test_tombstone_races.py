"""Tombstones against the copy-back's races and the ids it reuses.

A deletion of a thread another replica copies back wins even when it ended the
row a run's admission made after the switch, finishes between the journal's
look at the tombstones and the replay, or comes before a run on the id made
anew: the replica's copies of the deleted thread never feed the new one.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.auth import ANONYMOUS
from code_hero.config import (
    CheckpointerConfig,
    create_memory_checkpointer,
    create_postgres_checkpointer,
)
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.backends import open_backend
from code_hero.persistence.entries import CopyThread, PutCheckpoint, TouchThread
from code_hero.persistence.journal import Journal, Quarantined
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.persistence.tombstones import Judge, judge_for
from code_hero.persistence.unreachable import is_backend_error
from code_hero.runs.executor import StartRun
from tests.conftest import PG_ADMIN_URL, make_config
from tests.faults import BlackHoleProxy, until, with_port
from tests.persistence.proxied import SLOW_SPEC
from tests.persistence.test_degraded import (
    SLOW_STEPS,
    _a_thread_kept_across_a_recovery,
    _no_retry,
    rows,
)
from tests.persistence.test_tombstones import (
    RUN,
    _born_in_an_outage,
    _checkpoint_config,
    _holds_nothing_of,
)

PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432


@pytest.fixture(params=["sqlite", "postgres"])
def primary_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    return make_config(request.param, request)


def _then_deleted(judge: Judge, primary: Any, thread_id: str) -> Judge:
    """`judge`, and right after its first look replica A deletes `thread_id`, to the
    end: a deletion that finishes between the journal's look and the replay."""
    looked: list[set[str]] = []

    async def judged(thread_ids: set[str]) -> Any:
        verdict = await judge(thread_ids)
        if not looked:
            await primary.saver.adelete_thread(thread_id)
            assert (await primary.registry.delete_thread(thread_id))[0]
        looked.append(thread_ids)
        return verdict

    return judged


def _new_checkpoint(thread_id: str) -> PutCheckpoint:
    checkpoint = {**empty_checkpoint(), "id": str(uuid.uuid4())}
    return PutCheckpoint(_checkpoint_config(thread_id), checkpoint, {}, {})  # type: ignore[arg-type]


async def _drain(journal: Journal, primary: Any, fallback: Any, judge: Judge) -> None:
    await journal.drain(
        primary=primary,
        fallback=fallback,
        concurrency=1,
        is_unreachable=is_backend_error,
        on_synced=lambda: None,
        judge=judge,
    )


# ---------------------------------------------------------------- the row made after the switch


async def test_a_deleted_row_made_by_an_admission_after_the_switch_is_not_resurrected(
    primary_config: CheckpointerConfig,
) -> None:
    """Thread t, born in B's outage (created_at c1), never reached the primary: its copy
    was quarantined. After the switch a run admitted on t made t's row on the primary
    anew (c2): the same thread, to which the late copy adds the outage's runs. A client
    then deleted t, to the end: the tombstone names c2. Judged by c1 alone, the retry
    put t's row back with its run, events and checkpoint. A deletion of the id after
    c1 ended t (or that row): the copy is dropped."""
    old = datetime.now(UTC) - timedelta(minutes=5)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _born_in_an_outage(fallback, "t", old)
        admitted, _ = await primary.registry.admit_run(
            RunRecord("r-after", "t", "g", RunStatus.PENDING), reject_if_busy=False
        )
        assert admitted is not None
        await primary.saver.adelete_thread("t")
        assert (await primary.registry.delete_thread("t"))[0]

        journal = Journal(limit=10)
        for entry in (CopyThread("t", {}), _new_checkpoint("t")):
            journal.quarantine.append(Quarantined(entry, 1, "refused"))
        done, stopped = await journal.retry_quarantined(
            primary=primary,
            fallback=fallback,
            is_unreachable=is_backend_error,
            judge=judge_for(primary, fallback, old - timedelta(minutes=1)),
        )
        assert stopped is None and len(done) == 2
        assert await _holds_nothing_of(primary, "t")
        # The row's copy on its own (no journal's look first) is refused too.
        assert not await primary.registry.put_thread(
            await fallback.registry.get_thread("t", expired=True)  # type: ignore[arg-type]
        )


async def test_a_thread_made_before_a_deletion_of_its_id_keeps_nothing_but_after_it_does(
    primary_config: CheckpointerConfig,
) -> None:
    """The rule's edge: a copy created before a deletion of its id is dropped, one
    created after it (the id used again, by the server or a client) is copied."""
    now = datetime.now(UTC)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await primary.registry.touch_threads({"x": "u"})
        assert (await primary.registry.delete_thread("x"))[0]
        ((_, deleted),) = (await primary.registry.deleted_threads(["x"]))["x"]
        await _born_in_an_outage(fallback, "x", deleted + timedelta(seconds=1))
        await CopyThread("x", {}).replay(primary, fallback)
        assert await primary.registry.get_run(RUN) is not None  # after it: copied

        await primary.saver.adelete_thread("x")
        assert (await primary.registry.delete_thread("x"))[0]
        await fallback.forget(keep=set())
        await _born_in_an_outage(fallback, "x", now - timedelta(minutes=5))
        await CopyThread("x", {}).replay(primary, fallback)
        assert await _holds_nothing_of(primary, "x")  # before it: dropped


# ---------------------------------------------------------------- between the look and the replay


async def test_a_deletion_finishing_between_the_judge_and_the_replay_is_not_undone(
    primary_config: CheckpointerConfig,
) -> None:
    """Thread p from before B's outage (no row in the fallback): B journalled a
    checkpoint and a creating touch. The drain asks the tombstones first (none yet),
    then replays; A's deletion of p finishes in between. The touch made p's row anew
    and the checkpoint stayed with it: p was back. The replayed touch makes no row of
    an id deleted since it was journalled, and the checkpoints of a thread found
    deleted after the replay go."""
    began = datetime.now(UTC) - timedelta(minutes=1)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await primary.registry.touch_threads({"p": "u"})  # p, from before the outage
        journal = Journal(limit=10)
        journal.append(_new_checkpoint("p"))
        journal.append(TouchThread("p", "u", create=True))
        judge = _then_deleted(judge_for(primary, fallback, began), primary, "p")
        await _drain(journal, primary, fallback, judge)
        assert len(journal) == 0 and not journal.quarantine
        assert await primary.registry.get_thread("p", expired=True) is None
        assert await primary.count_checkpoints("p") == 0


async def test_checkpoints_behind_a_refused_row_copy_do_not_stay_rowless(
    primary_config: CheckpointerConfig,
) -> None:
    """A thread born in B's outage, its row copied by the first drain; A's deletion
    finishes after the next drain's look. The row's copy is refused (`put_thread`), but
    the checkpoint journalled behind it in the thread's lane went in: a checkpoint of
    no thread. It goes after the replay."""
    old = datetime.now(UTC) - timedelta(minutes=5)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _born_in_an_outage(fallback, "t", old)
        await CopyThread("t", {}).replay(primary, fallback)  # the first drain
        journal = Journal(limit=10)
        journal.append(CopyThread("t", {}))
        journal.append(_new_checkpoint("t"))
        judge = _then_deleted(judge_for(primary, fallback, old), primary, "t")
        await _drain(journal, primary, fallback, judge)
        assert await _holds_nothing_of(primary, "t")


async def test_a_replayed_touch_leaves_an_id_deleted_since_alone_and_makes_any_other(
    primary_config: CheckpointerConfig,
) -> None:
    """`touch_threads(unless_deleted_since=)`: no row for an id deleted since then, nor
    a bump of the row made anew after that deletion; a row for an id deleted before,
    or never; without it, a touch makes the row as ever."""
    async with open_backend(primary_config) as primary:
        registry = primary.registry
        await registry.touch_threads({"before": "u", "after": "u", "anew": "u"})
        journalled = datetime.now(UTC) - timedelta(minutes=1)
        for thread_id in ("before", "after", "anew"):
            assert (await registry.delete_thread(thread_id))[0]
        async with registry._session() as s:  # type: ignore[attr-defined]
            await s.execute(  # "before": deleted before the touch was journalled
                "UPDATE code_hero_deleted_threads SET deleted_at = ? WHERE thread_id = ?",
                [registry._ts(journalled - timedelta(minutes=1)), "before"],  # type: ignore[attr-defined]
            )
        await registry.touch_threads({"anew": "v"})  # made anew after its deletion
        made = await registry.get_thread("anew")
        assert made is not None

        touches = {"before": "u", "after": "u", "anew": "u", "never": "u"}
        await registry.touch_threads(touches, unless_deleted_since=journalled)
        assert await registry.get_thread("after", expired=True) is None
        assert await registry.get_thread("anew") == made  # not bumped
        for thread_id in ("before", "never"):
            assert await registry.get_thread(thread_id) is not None
        await registry.touch_threads({"after": "u"})
        assert await registry.get_thread("after") is not None


@pytest.mark.postgres
async def test_a_replayed_touch_a_deletion_in_flight_held_up_makes_no_row(pg_database: str) -> None:
    """On PostgreSQL the touch's statement sees no tombstone yet when the deletion that
    holds the row commits while the touch waits for it; the insert, retried on the row's
    delete, made the row anew. The check after the statement rolls it back."""
    since = datetime.now(UTC) - timedelta(minutes=1)
    async with (
        open_backend(create_postgres_checkpointer(pg_database)) as primary,
        await psycopg.AsyncConnection.connect(pg_database) as deletion,
    ):
        await primary.registry.touch_threads({"p": "u"})
        async with deletion.transaction():  # A's last step, held open
            await deletion.execute(
                "INSERT INTO code_hero_deleted_threads SELECT thread_id, created_at, now() "
                "FROM code_hero_threads WHERE thread_id = 'p'"
            )
            await deletion.execute("DELETE FROM code_hero_threads WHERE thread_id = 'p'")
            touch = asyncio.create_task(
                primary.registry.touch_threads({"p": "u"}, unless_deleted_since=since)
            )
            await until(lambda: _waits_for_a_lock(pg_database))
        await touch
        assert await primary.registry.get_thread("p", expired=True) is None


async def _waits_for_a_lock(url: str) -> bool:
    found = rows(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'",
    )
    return found == [(1,)]


# ---------------------------------------------------------------- end to end


def _gateway(url: str) -> Gateway:
    checkpointer = create_postgres_checkpointer(url, pool_timeout=1, health_check_interval=0.2)
    settings = GatewaySettings(checkpointer=checkpointer, graphs={"slow": SLOW_SPEC})
    return Gateway(replace(settings, sweep_interval=None))


async def _steps(gw: Gateway, thread_id: str) -> list[str]:
    found = await gw.manager.get_checkpointer().aget_tuple(_checkpoint_config(thread_id))
    assert found is not None
    return list(found.checkpoint["channel_values"]["steps"])


@pytest.mark.postgres
async def test_a_run_on_a_kept_thread_another_replica_deleted_starts_from_nothing(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replica B keeps thread t across a recovery (an entry PostgreSQL refuses); replica
    A deletes t, to the end. A run B admits on the id then read t's checkpoint from B's
    fallback (a kept thread's reads fall back to it where PostgreSQL has none) and went
    on from the deleted thread's state. The admission finds t's tombstone and forgets
    B's copies first: the run starts from nothing."""
    async with AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(BlackHoleProxy("127.0.0.1", PG_PORT))
        b = await stack.enter_async_context(_gateway(with_port(pg_database, proxy.port)))
        a = await stack.enter_async_context(_gateway(pg_database))
        thread_id = await _a_thread_kept_across_a_recovery(b, proxy)
        _no_retry(monkeypatch)  # its retry would find the deletion too: not yet
        assert (await a.delete_thread(thread_id)).deleted

        run = await b.start_run(StartRun(thread_id=thread_id, graph="slow", input={}, wait=True))
        assert run.status is RunStatus.SUCCESS
        assert await _steps(a, thread_id) == SLOW_STEPS
        router = b.manager.router
        assert not router.is_local(thread_id) and not router.quarantined


@pytest.mark.postgres
async def test_a_replica_started_in_an_outage_gives_nothing_back_to_a_thread_deleted_in_it(
    pg_database: str,
) -> None:
    """Replica B starts with PostgreSQL unreachable and writes a checkpoint of thread p,
    from before (a graph on its saver); replica A deletes p. B knew no start of its
    outage (it never lost the primary, it never had it), so judged p kept: its
    checkpoint went back into PostgreSQL, a thread's state with no thread."""
    async with AsyncExitStack() as stack:
        proxy = await stack.enter_async_context(BlackHoleProxy("127.0.0.1", PG_PORT))
        a = await stack.enter_async_context(_gateway(pg_database))
        thread_id = (await a.create_thread(caller=ANONYMOUS)).thread_id
        proxy.refuse()
        b = await stack.enter_async_context(_gateway(with_port(pg_database, proxy.port)))
        assert b.manager.overall_status == "degraded"
        saver = b.manager.get_checkpointer()
        await saver.aput(_checkpoint_config(thread_id), empty_checkpoint(), {"user_id": "u"}, {})
        assert b.manager.pending_sync > 0
        assert (await a.delete_thread(thread_id)).deleted

        proxy.forward()
        await until(lambda: _synced(b))
        for table in ("code_hero_threads", "checkpoints"):
            found = rows(
                pg_database, f"SELECT count(*) FROM {table} WHERE thread_id = %s", thread_id
            )
            assert found == [(0,)], table


async def _synced(gw: Gateway) -> bool:
    return gw.manager.overall_status == "healthy" and gw.manager.pending_sync == 0
