"""Journal entries that copy registry state: on time, and late (the primary serves)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from code_hero.config import create_memory_checkpointer, create_sqlite_checkpointer
from code_hero.persistence.backends import open_backend
from code_hero.persistence.entries import CopyThread
from code_hero.persistence.records import (
    EventRecord,
    RunRecord,
    RunStatus,
    ThreadRecord,
    ThreadStatus,
)

RUN = "6f9d3c1e-6a4e-4f0e-9b1a-2d5c7e9f1a3b"


async def test_a_late_copy_adds_what_is_missing_and_replaces_nothing(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.BUSY, {"from": "outage"}, now, now)
    pending = RunRecord(RUN, "t", "g", RunStatus.PENDING, created_at=now)
    events = [EventRecord(RUN, "t", seq, "status", {"n": seq}, now) for seq in (1, 2)]
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(create_sqlite_checkpointer(str(tmp_path / "p.sqlite"))) as primary,
    ):
        await fallback.registry.put_thread(thread)
        await fallback.registry.put_run(pending)
        await fallback.registry.store_events(events)
        # The primary moved on after the switch-back: the run finished there.
        await primary.registry.put_thread(
            ThreadRecord("t", "u", ThreadStatus.IDLE, {"from": "primary"}, now, now)
        )
        await primary.registry.put_run(RunRecord(RUN, "t", "g", RunStatus.SUCCESS, created_at=now))

        await CopyThread("t", {}).late().replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        kept = await primary.registry.get_thread("t")
        assert run is not None and run.status is RunStatus.SUCCESS
        assert kept is not None and kept.metadata == {"from": "primary"}
        assert [e.seq for e in await primary.registry.list_events(RUN)] == [1, 2]

        # On time (the primary does not serve yet), the copy is the truth.
        await CopyThread("t", {}).replay(primary, fallback)
        run = await primary.registry.get_run(RUN)
        assert run is not None and run.status is RunStatus.PENDING
