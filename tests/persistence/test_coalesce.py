"""Thread touches of concurrent threads share one registry call; a bad one fails alone."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from code_hero.checkpointing import EnhancedCheckpointerManager
from code_hero.config import create_postgres_checkpointer, create_sqlite_checkpointer
from code_hero.persistence.coalesce import Coalescer

THREADS = 12


@pytest.mark.postgres
async def test_concurrent_touches_share_calls_and_all_land(pg_database: str) -> None:
    async with EnhancedCheckpointerManager(create_postgres_checkpointer(pg_database)) as manager:
        router = manager.router
        before = router._touches.calls
        await asyncio.gather(*(router.touch(f"t{i}", f"u{i}") for i in range(THREADS)))
        assert router._touches.calls - before < THREADS
        for i in range(THREADS):
            thread = await manager.registry.get_thread(f"t{i}")
            assert thread is not None and thread.user_id == f"u{i}"


@pytest.mark.postgres
async def test_a_bad_touch_fails_only_its_caller(pg_database: str) -> None:
    async with EnhancedCheckpointerManager(create_postgres_checkpointer(pg_database)) as manager:
        names = [f"t{i}" for i in range(THREADS)]
        names[4] = "bad\0thread"  # PostgreSQL text cannot hold NUL
        outcomes = await asyncio.gather(
            *(manager.router.touch(n, None) for n in names), return_exceptions=True
        )
        assert [isinstance(o, Exception) for o in outcomes] == [i == 4 for i in range(THREADS)]
        assert isinstance(outcomes[4], psycopg.DataError)
        assert manager.router.serving  # a refused row is not an outage
        for name in names[:4] + names[5:]:
            assert await manager.registry.get_thread(name) is not None


async def test_touches_on_sqlite_land_too(sqlite_path: str) -> None:
    async with EnhancedCheckpointerManager(create_sqlite_checkpointer(sqlite_path)) as manager:
        await asyncio.gather(*(manager.router.touch(f"t{i}", None) for i in range(THREADS)))
        for i in range(THREADS):
            assert await manager.registry.get_thread(f"t{i}") is not None


async def test_items_of_other_keys_wait_their_turn_and_a_cancelled_caller_is_dropped() -> None:
    calls: list[tuple[str, list[int]]] = []
    gate = asyncio.Event()

    async def run(key: str, items: list[int]) -> None:
        calls.append((key, items))
        await gate.wait()

    coalescer: Coalescer[str, int] = Coalescer(run, shared=lambda exc: False)
    first = asyncio.ensure_future(coalescer.submit("a", 0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first call is in flight
    later = [asyncio.ensure_future(coalescer.submit(k, i)) for i, k in enumerate("abab", 1)]
    await asyncio.sleep(0)
    later[2].cancel()  # ("a", 3) while queued
    gate.set()
    await asyncio.gather(first, *later, return_exceptions=True)
    assert calls == [("a", [0]), ("a", [1]), ("b", [2, 4])]
    assert later[2].cancelled() and all(f.result() is None for f in [first, *later[:2], later[3]])


async def refuse_three(key: str, items: list[int]) -> None:
    if 3 in items:
        raise ValueError(f"refused {items}")


async def test_a_failing_call_is_retried_item_by_item() -> None:
    coalescer: Coalescer[str, int] = Coalescer(refuse_three, shared=lambda exc: False)
    outcomes = await asyncio.gather(
        *(coalescer.submit("k", i) for i in range(5)), return_exceptions=True
    )
    assert [isinstance(o, ValueError) for o in outcomes] == [False, False, False, True, False]
    assert str(outcomes[3]) == "refused [3]"


async def test_a_shared_failure_fails_every_caller_of_the_call() -> None:
    coalescer: Coalescer[str, int] = Coalescer(refuse_three, shared=lambda exc: True)
    outcomes = await asyncio.gather(
        *(coalescer.submit("k", i) for i in range(5)), return_exceptions=True
    )
    assert all(str(o) == "refused [0, 1, 2, 3, 4]" for o in outcomes)
