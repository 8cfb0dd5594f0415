"""Editing threads born in an outage: created, updated and copied on the fallback, then
copied back to PostgreSQL in order, with their final rows and every checkpoint.

A thread born in the outage lives whole in the fallback, so `createThread`,
`updateThread` and `copyThread` can answer for it truthfully there; a thread only
PostgreSQL holds still answers UNAVAILABLE with `retryAfter` (its state is unknown).
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from code_hero.auth import ANONYMOUS
from code_hero.errors import BackendUnavailableError, ConflictError
from code_hero.gateway import Gateway
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun
from tests.faults import until
from tests.persistence.proxied import behind_a_proxy, degraded, synced

pytestmark = pytest.mark.postgres


def _rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, params).fetchall())


def _metadata(url: str, thread_id: str) -> list[tuple[Any, ...]]:
    return _rows(url, "SELECT metadata FROM code_hero_threads WHERE thread_id = %s", thread_id)


def _checkpoint_ids(url: str, thread_id: str) -> list[str]:
    found = _rows(
        url,
        "SELECT checkpoint_id FROM checkpoints WHERE thread_id = %s ORDER BY checkpoint_id",
        thread_id,
    )
    return [row[0] for row in found]


async def _history(gw: Gateway, thread_id: str) -> list[tuple[str, Any]]:
    page = await gw.list_checkpoints(thread_id, first=100)
    return [(c.checkpoint_id, c.values) for c in page.items]


async def test_a_thread_born_in_an_outage_is_updated_and_copied_and_both_reach_postgres(
    pg_database: str,
) -> None:
    async with behind_a_proxy(pg_database) as (gw, proxy):
        before = await gw.start_run(StartRun(graph="slow", input={"steps": []}, wait=True))
        proxy.refuse()
        await until(lambda: degraded(gw))
        run = await gw.start_run(StartRun(graph="slow", input={"delay": 0}, wait=True))
        assert run.status is RunStatus.SUCCESS
        born = run.thread_id

        first = await gw.update_thread(born, metadata={"team": "a", "n": 1}, caller=ANONYMOUS)
        assert first.metadata == {"graph": "slow", "team": "a", "n": 1}
        copy = await gw.copy_thread(born, caller=ANONYMOUS)
        assert copy.metadata == first.metadata
        last = await gw.update_thread(born, metadata={"team": "b", "n": None}, caller=ANONYMOUS)
        assert last.metadata == {"graph": "slow", "team": "b"}
        # Its id is in use: CONFLICT, or the thread itself when asked for.
        with pytest.raises(ConflictError):
            await gw.create_thread(thread_id=born, caller=ANONYMOUS)
        same = await gw.create_thread(thread_id=born, if_exists_raise=False, caller=ANONYMOUS)
        assert same.metadata == last.metadata
        # The copy has the source's whole history, under its own id.
        source = await _history(gw, born)
        assert source and await _history(gw, copy.thread_id) == source
        # A new thread of the client's own is born in the fallback too.
        fresh = await gw.create_thread(metadata={"k": "v"}, caller=ANONYMOUS)

        # What only PostgreSQL holds (or may hold) stays UNAVAILABLE with a hint.
        for call in (
            gw.update_thread(before.thread_id, metadata={"x": 1}, caller=ANONYMOUS),
            gw.copy_thread(before.thread_id, caller=ANONYMOUS),
            gw.create_thread(thread_id=before.thread_id, caller=ANONYMOUS),
            gw.create_thread(thread_id="a-thread-nobody-saw", caller=ANONYMOUS),
        ):
            with pytest.raises(BackendUnavailableError, match="unreachable") as caught:
                await call
            assert caught.value.retry_after >= 1

        proxy.forward()
        await until(lambda: synced(gw))
        assert (await gw.health())["quarantined"] == 0
        assert _metadata(pg_database, born) == [({"graph": "slow", "team": "b"},)]
        assert _metadata(pg_database, copy.thread_id) == [({"graph": "slow", "team": "a", "n": 1},)]
        assert _metadata(pg_database, fresh.thread_id) == [({"k": "v"},)]
        ids = [checkpoint_id for checkpoint_id, _ in source]
        assert _checkpoint_ids(pg_database, copy.thread_id) == sorted(ids)
        assert _checkpoint_ids(pg_database, born) == sorted(ids)
        # And the gateway reads the copy from PostgreSQL as it read it in the outage.
        assert await _history(gw, copy.thread_id) == source
        again = await gw.start_run(
            StartRun(thread_id=copy.thread_id, graph="slow", input={}, wait=True)
        )
        assert again.status is RunStatus.SUCCESS
