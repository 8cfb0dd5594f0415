"""A webhook claim reads the outbox through its due index, never every PENDING row.

Claims run at every enqueue and at every attempt's end. When the next due time was
a `min()` over all PENDING deliveries, 100,000 not yet due cost each claim ~30 ms on
PostgreSQL and ~45 ms on SQLite (inside its one write transaction); read as the
first next try to come plus the few due rows the claim left, each is an index range.
The plans are asserted rather than the time: the statements the claim sends, each
EXPLAINed on a store of 20,000 future deliveries.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from code_hero.persistence import clock
from code_hero.persistence.records import Registry
from code_hero.persistence.registry.dialect import Dialect, Session
from code_hero.persistence.registry.postgres import PostgresRegistry

ROWS = 20_000


async def test_a_claim_reads_only_index_ranges(registry: Registry) -> None:
    assert isinstance(registry, Dialect)
    now = clock.now()
    fixed = ["u", "r", "t", "RUN_SUCCEEDED", "http://127.0.0.1:9/", "{}", "PENDING", 0]
    later = [registry._ts(now + timedelta(hours=1, seconds=i)) for i in range(ROWS)]
    rows = [[f"d{i:06}", *fixed, registry._ts(now), at] for i, at in enumerate(later)]
    async with registry._session(atomic=True) as s:
        await s.executemany(
            "INSERT INTO code_hero_webhook_deliveries (delivery_id, user_id, run_id, "
            "thread_id, event, url, payload, status, attempts, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        # Two due, one leased by another claimer: one claimed, one left.
        await s.execute(
            "UPDATE code_hero_webhook_deliveries SET next_attempt_at = ? "
            "WHERE delivery_id < 'd000002'",
            [registry._ts(now - timedelta(seconds=5))],
        )
        await s.execute(
            "UPDATE code_hero_webhook_deliveries SET lease_owner = 'other', "
            "lease_expires_at = ? WHERE delivery_id = 'd000000'",
            [registry._ts(now + timedelta(seconds=20))],
        )
        await s.execute("ANALYZE code_hero_webhook_deliveries")
    sent: list[tuple[str, Sequence[Any]]] = []
    session = registry._session

    @asynccontextmanager
    async def recording(*, atomic: bool = False) -> AsyncIterator[Session]:
        async with session(atomic=atomic) as s:
            fetch = s.fetch

            async def recorded(sql: str, params: Sequence[Any] = (), **kw: Any) -> Any:
                sent.append((sql, params))
                return await fetch(sql, params, **kw)

            s.fetch = recorded  # type: ignore[method-assign]
            yield s

    registry._session = recording  # type: ignore[method-assign]
    try:
        claim = await registry.claim_deliveries(
            "here", now=now, until=now + timedelta(seconds=25), limit=5
        )
    finally:
        del registry._session
    assert [d.delivery_id for d in claim.deliveries] == ["d000001"]
    assert claim.next_due == now + timedelta(seconds=20)  # the other claimer's lease
    assert sent
    for sql, params in sent:
        async with registry._session() as s:
            if isinstance(registry, PostgresRegistry):
                plan = [next(iter(r.values())) for r in await s.fetch(f"EXPLAIN {sql}", params)]
                _assert_pg_ranges(plan)
            else:
                found = await s.fetch(f"EXPLAIN QUERY PLAN {sql}", params)
                _assert_sqlite_ranges([r["detail"] for r in found])


def _assert_pg_ranges(plan: list[str]) -> None:
    """Every read of the outbox is an index scan with a condition (a range, a key)."""
    for i, line in enumerate(plan):
        if "on code_hero_webhook_deliveries" in line and "Update on" not in line:
            assert "Index" in line and "Seq Scan" not in line, plan
            assert "Index Cond" in plan[i + 1], plan


def _assert_sqlite_ranges(plan: list[str]) -> None:
    """Every read of the outbox searches an index with a constraint in parentheses
    (a range of next tries, a key), not the whole (partial) index or table."""
    for line in plan:
        if re.match(r"(SCAN|SEARCH) (code_hero_webhook_deliveries|[a-z])\b", line):
            assert re.match(r"SEARCH \S+ USING .*INDEX \S+ \(", line), plan
