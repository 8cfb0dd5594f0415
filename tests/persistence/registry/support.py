"""What the registry tests share: databases, times, records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from code_hero.persistence.records import (
    EventRecord,
    Registry,
    RunRecord,
    RunStatus,
    ThreadRecord,
    ThreadStatus,
)

KINDS = ["sqlite-file", "sqlite-memory", "postgres"]
PG_KWARGS: dict[str, Any] = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}


def make_pool(url: str) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(url, kwargs=PG_KWARGS, min_size=2, max_size=4, open=False)


def at(seconds: float) -> datetime:
    return datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def run(run_id: str, thread_id: str = "t1", **kw: Any) -> RunRecord:
    fields: dict[str, Any] = {"graph": "g", "status": RunStatus.PENDING, **kw}
    return RunRecord(run_id=run_id, thread_id=thread_id, **fields)


def events(run_id: str, thread_id: str, *seqs: int, type: str = "token") -> list[EventRecord]:
    return [
        EventRecord(run_id, thread_id, s, type, {"n": s, "text": f"tok{s}"}, at(s)) for s in seqs
    ]


def thread(thread_id: str, when: datetime | None = None, **kw: Any) -> ThreadRecord:
    """A thread record updated (and created) `when`, by default now."""
    when = when or datetime.now(UTC)
    fields: dict[str, Any] = {"user_id": None, "status": ThreadStatus.IDLE, "metadata": {}, **kw}
    return ThreadRecord(thread_id=thread_id, created_at=when, updated_at=when, **fields)


async def put(
    registry: Registry, thread_id: str, when: datetime | None = None, **kw: Any
) -> ThreadRecord:
    """A thread stored as given (as a copy stores it), as read back."""
    await registry.put_thread(thread(thread_id, when, **kw))
    stored = await registry.get_thread(thread_id)
    assert stored is not None
    return stored
