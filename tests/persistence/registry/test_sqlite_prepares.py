"""SQLite's statements are prepared once: a deletion's and a run end's webhook outbox
inserts name their event's pattern in their text, not as a bound parameter, which SQLite
plans a LIKE by and so prepared the statement afresh at every execution (issue 15). The
deliveries they queue are unchanged.

A statement's preparation is seen through the connection's authorizer, which SQLite asks
for every table and column a statement reads or writes as it compiles it, and only then.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from code_hero.config import create_sqlite_checkpointer
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.records import RunStatus, ThreadStatus
from code_hero.persistence.registry import SqliteRegistry
from code_hero.persistence.webhooks import DeliveryFilter, WebhookEvent, WebhookRecord
from tests.persistence.registry.support import put, run


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    """The registry of a SQLite manager (the saver's tables too, which a deletion empties),
    with a webhook of every event."""
    async with EnhancedCheckpointerManager(
        create_sqlite_checkpointer(str(tmp_path / "m.sqlite"))
    ) as manager:
        backend = manager.router.primary.backend
        assert backend is not None and isinstance(backend.registry, SqliteRegistry)
        hook = WebhookRecord(
            "wh1",
            None,
            "https://hooks.example.com/a",
            tuple(WebhookEvent),
            datetime.now(UTC),
            all_users=True,
        )
        await backend.registry.create_webhook(hook, "whsec_c2VjcmV0")
        yield backend.registry


async def compiled(registry: SqliteRegistry) -> Counter[tuple[object, ...]]:
    """What SQLite compiles on the registry's connection from now on (SQLITE_TRANSACTION
    aside: the sqlite3 module prepares a COMMIT at each commit)."""
    seen: Counter[tuple[object, ...]] = Counter()

    def authorize(action: int, *names: object) -> int:
        if action != sqlite3.SQLITE_TRANSACTION:
            seen[(action, *names)] += 1
        return sqlite3.SQLITE_OK

    conn = registry.conn
    await conn._execute(conn._conn.set_authorizer, authorize)  # type: ignore[no-untyped-call]
    return seen


async def test_a_second_deletion_compiles_nothing(registry: SqliteRegistry) -> None:
    for thread_id in ("t1", "t2"):
        await put(registry, thread_id)
    seen = await compiled(registry)
    first = await registry.purge_idle_thread("t1", None)
    assert first.existed and seen  # prepared at its first execution
    seen.clear()
    second = await registry.purge_idle_thread("t2", None)
    assert second.existed
    assert not seen
    page = await registry.list_deliveries(DeliveryFilter(webhook_id="wh1"), first=10)
    deleted = sorted(d.thread_id for d in page.items if d.event is WebhookEvent.THREAD_DELETED)
    assert deleted == ["t1", "t2"]  # each deletion's delivery queued, as before


async def test_a_second_run_end_compiles_nothing(registry: SqliteRegistry) -> None:
    for run_id, thread_id in [("warm", "t0"), ("r1", "t1"), ("r2", "t2")]:
        await registry.admit_run(run(run_id, thread_id), reject_if_busy=False)
    await registry.finish_run("warm", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    seen = await compiled(registry)
    await registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    seen.clear()
    await registry.finish_run("r2", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
    assert not seen
    for run_id in ("r1", "r2"):  # each end's delivery queued, as before
        page = await registry.list_deliveries(DeliveryFilter(run_id=run_id), first=10)
        assert [d.event for d in page.items] == [WebhookEvent.RUN_SUCCEEDED]
