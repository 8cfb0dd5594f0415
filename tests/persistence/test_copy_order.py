"""An outage's copy-back never shows a run's end before its events: a reader of the
primary (a dashboard that sees SUCCESS, then reads the run's events) finds them all
there. The copy reads the fallback's events between its transactions: each test looks
at the primary at every such read, as a reader in between would.

A late copy (an adopted dead replica's file, a restart on one's own file, a
quarantined copy retried) and an on-time copy whose events pass its first page alike."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from code_hero.config import CheckpointerConfig, create_memory_checkpointer
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.entries import CopyThread
from code_hero.persistence.records import (
    EventRecord,
    RunRecord,
    RunStatus,
    ThreadRecord,
    ThreadStatus,
)
from tests.conftest import make_config

NOW = datetime.now(UTC)
THREAD = ThreadRecord("t", "u", ThreadStatus.IDLE, {}, NOW, NOW)
RUNNING = RunRecord(
    "r1", "t", "g", RunStatus.RUNNING, user_id="u", created_at=NOW, lease_owner="exec-a"
)
ENDED = replace(RUNNING, status=RunStatus.SUCCESS, lease_owner=None, finished_at=NOW)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def primary_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    return make_config(request.param, request)


def _events(run_id: str, seqs: range) -> list[EventRecord]:
    return [EventRecord(run_id, "t", seq, "status", {"seq": seq}, NOW) for seq in seqs]


@asynccontextmanager
async def _watched(
    primary_config: CheckpointerConfig, seen: list[tuple[str, str | None, int]]
) -> AsyncIterator[tuple[Backend, Backend]]:
    """(fallback, primary): at each read of the fallback's events, what the primary shows
    of the run read (its status, how many events) joins `seen`."""
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        read = fallback.registry.list_events

        async def looked_at(run_id: str, **kwargs: Any) -> list[EventRecord]:
            there = await primary.registry.get_run(run_id)
            status = None if there is None else there.status.value
            seen.append((run_id, status, len(await primary.registry.list_events(run_id))))
            return await read(run_id, **kwargs)

        fallback.registry.list_events = looked_at  # type: ignore[method-assign]
        await fallback.registry.put_thread(THREAD)
        yield fallback, primary


def _ended_early(seen: list[tuple[str, str | None, int]], events: int) -> list[object]:
    """The looks that found a run ended in the primary with fewer than `events` events."""
    return [look for look in seen if look[1] == "SUCCESS" and look[2] < events]


async def _copied_in_flight(
    fallback: Backend, primary: Backend, run: RunRecord = RUNNING
) -> CopyThread:
    """r1 (`run`) with its first event, copied unfinished by a first pass: the copy, for
    its late pass."""
    await fallback.registry.put_run(run)
    await fallback.registry.store_events(_events("r1", range(1, 2)))
    copy = CopyThread("t", {})
    await copy.unfinished().replay(primary, fallback)
    return copy


async def _ended_since(fallback: Backend) -> None:
    """r1 ended in the fallback after that first pass, with events 2-4."""
    await fallback.registry.put_run(ENDED)
    await fallback.registry.store_events(_events("r1", range(2, 5)))


async def test_a_late_copy_puts_a_run_ended_in_the_outage_in_with_its_events(
    primary_config: CheckpointerConfig,
) -> None:
    """A thread born in the outage, its run ended there (a dead replica's file adopted,
    `adoption.py`): the late copy's run goes in with its events, not before them."""
    seen: list[tuple[str, str | None, int]] = []
    async with _watched(primary_config, seen) as (fallback, primary):
        await fallback.registry.put_run(ENDED)
        await fallback.registry.store_events(_events("r1", range(1, 4)))
        await CopyThread("t", {}).late().replay(primary, fallback)
        assert len(await primary.registry.list_events("r1")) == 3
    assert seen and _ended_early(seen, 3) == []


async def test_a_late_copy_ends_a_run_copied_unfinished_after_its_events(
    primary_config: CheckpointerConfig,
) -> None:
    """A first pass copied r1 in flight; it ended in the fallback after that: the late
    copy's end goes in after the events the run emitted meanwhile."""
    seen: list[tuple[str, str | None, int]] = []
    async with _watched(primary_config, seen) as (fallback, primary):
        copy = await _copied_in_flight(fallback, primary)
        await _ended_since(fallback)
        await copy.late().replay(primary, fallback)
        there = await primary.registry.get_run("r1")
        assert there is not None and there.status is RunStatus.SUCCESS
        assert len(await primary.registry.list_events("r1")) == 4
        assert copy.copied["r1"] == 4  # a replay of it reads none of them again
    assert _ended_early(seen, 4) == []


async def test_an_on_time_copy_puts_an_ended_run_in_with_all_its_events(
    primary_config: CheckpointerConfig,
) -> None:
    """r1 ended in the outage with 700 events, more than the copy's first page: none of
    them is left for after the commit that shows its end."""
    seen: list[tuple[str, str | None, int]] = []
    async with _watched(primary_config, seen) as (fallback, primary):
        await fallback.registry.put_run(ENDED)
        await fallback.registry.store_events(_events("r1", range(1, 701)))
        await CopyThread("t", {}).replay(primary, fallback)
        assert len(await primary.registry.list_events("r1")) == 700
    assert _ended_early(seen, 700) == []


async def test_an_on_time_copy_leaves_no_ended_run_without_room_for_its_events(
    primary_config: CheckpointerConfig,
) -> None:
    """r0 (older) fills the copy's first page with 500 events; r1 ended after it: r1 does
    not go in ended with its events left for later."""
    seen: list[tuple[str, str | None, int]] = []
    older = replace(ENDED, run_id="r0", created_at=NOW.replace(year=NOW.year - 1))
    async with _watched(primary_config, seen) as (fallback, primary):
        await fallback.registry.put_run(older)
        await fallback.registry.put_run(ENDED)
        await fallback.registry.store_events(_events("r0", range(1, 501)))
        await fallback.registry.store_events(_events("r1", range(1, 4)))
        await CopyThread("t", {}).replay(primary, fallback)
        assert len(await primary.registry.list_events("r1")) == 3
    assert [look for look in _ended_early(seen, 3) if look[0] == "r1"] == []


async def test_a_late_end_and_its_events_go_in_together_or_not_at_all(
    primary_config: CheckpointerConfig,
) -> None:
    """The late copy of an end went in after its events, in two transactions: an executor
    that claimed the run between them (the dead replica's lease lapsed) numbered its
    events after the copied end event, in a run left RUNNING. Claimed before the end, the
    end is refused with its events; the run is the claimer's, its log as it was."""
    seen: list[tuple[str, str | None, int]] = []
    async with _watched(primary_config, seen) as (fallback, primary):
        lapsed = replace(RUNNING, lease_expires_at=NOW - timedelta(minutes=5))
        copy = await _copied_in_flight(fallback, primary, lapsed)
        await _ended_since(fallback)
        registry = primary.registry
        finish = registry.finish_run

        async def claimed_first(*args: Any, **kwargs: Any) -> Any:
            now = datetime.now(UTC)
            taken = await registry.claim_runs(
                "exec-b", now=now, until=now + timedelta(minutes=1), limit=10
            )
            assert [r.run_id for r in taken] == ["r1"]
            return await finish(*args, **kwargs)

        registry.finish_run = claimed_first  # type: ignore[method-assign]
        await copy.late().replay(primary, fallback)
        there = await registry.get_run("r1")
        assert there is not None
        assert (there.status, there.lease_owner) == (RunStatus.RUNNING, "exec-b")
        assert [e.seq for e in await registry.list_events("r1")] == [1]


async def test_a_refused_late_end_still_brings_the_events_a_released_run_takes(
    primary_config: CheckpointerConfig,
) -> None:
    """Released in the primary after the switch (this replica's executor gave it up), the
    run refuses the late copy's end, not its events: they go in alone, as before the end
    and its events went together (events 2-4 were dropped for good: the next claimer
    numbers from 2)."""
    seen: list[tuple[str, str | None, int]] = []
    async with _watched(primary_config, seen) as (fallback, primary):
        copy = await _copied_in_flight(fallback, primary)
        await primary.registry.release_runs("exec-a", ["r1"])
        await _ended_since(fallback)
        await copy.late().replay(primary, fallback)
        assert [e.seq for e in await primary.registry.list_events("r1")] == [1, 2, 3, 4]
