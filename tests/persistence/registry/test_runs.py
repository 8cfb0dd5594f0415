"""Runs in the registry: admitted, read, updated, listed, copied, deleted."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from code_hero.errors import ConflictError
from code_hero.persistence.records import Registry, RunFilter, RunStatus
from tests.persistence.registry.support import at, events, run


async def test_admit_get_update_run(registry: Registry) -> None:
    before = datetime.now(UTC)
    created, busy = await registry.admit_run(
        run("r1", input={"messages": ["hi"]}, metadata={"m": 1}, config={"c": {"d": 2}}),
        reject_if_busy=False,
    )
    assert created is not None and busy is None
    assert created.created_at is not None and created.created_at >= before - timedelta(seconds=1)
    assert created.input == {"messages": ["hi"]} and created.output is None
    assert await registry.get_run("r1") == created
    with pytest.raises(ConflictError):
        await registry.admit_run(run("r1"), reject_if_busy=False)

    started = datetime(2025, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    updated = await registry.update_run(
        "r1",
        status=RunStatus.RUNNING,
        started_at=started,
        lease_owner="w1",
        lease_expires_at=started + timedelta(seconds=30),
    )
    assert updated is not None
    assert updated.status is RunStatus.RUNNING and updated.lease_owner == "w1"
    assert updated.started_at == started and updated.started_at.utcoffset() == timedelta(0)
    assert updated.input == created.input and updated.metadata == {"m": 1}

    done = await registry.update_run(
        "r1", status=RunStatus.ERROR, output=[1, "two"], error="boom", lease_owner=None
    )
    assert done is not None and done.status.finished
    assert (done.output, done.error, done.lease_owner) == ([1, "two"], "boom", None)
    assert done.started_at == started
    assert await registry.get_run("r1") == done
    assert await registry.update_run("missing", status=RunStatus.RUNNING) is None
    assert await registry.update_run("r1") == done
    with pytest.raises(TypeError):
        await registry.update_run("r1", not_a_field=1)


async def test_list_runs_paging_and_filters(registry: Registry) -> None:
    for i in range(25):
        await registry.admit_run(
            run(
                f"r{i:02}",
                thread_id=f"t{i % 2}",
                graph="g" if i % 3 else "h",
                user_id="u1" if i < 10 else "u2",
                status=RunStatus.SUCCESS if i % 5 == 0 else RunStatus.PENDING,
                created_at=at(i // 2),  # pairs share created_at: run_id breaks the tie
            ),
            reject_if_busy=False,
        )
    newest_first = [f"r{i:02}" for i in reversed(range(25))]

    seen: list[str] = []
    after: str | None = None
    while True:
        page = await registry.list_runs(RunFilter(), first=7, after=after)
        seen += [r.run_id for r in page.items]
        if not page.has_next_page:
            break
        after = page.end_cursor
    assert seen == newest_first

    async def ids(**kw: Any) -> list[str]:
        return [r.run_id for r in (await registry.list_runs(RunFilter(**kw), first=50)).items]

    assert await ids(thread_id="t1") == [r for r in newest_first if int(r[1:]) % 2 == 1]
    assert await ids(graph="h") == [r for r in newest_first if int(r[1:]) % 3 == 0]
    assert await ids(user_id="u1") == [r for r in newest_first if int(r[1:]) < 10]
    assert await ids(status=RunStatus.SUCCESS) == ["r20", "r15", "r10", "r05", "r00"]
    assert await ids(thread_id="t0", status=RunStatus.SUCCESS, graph="h") == ["r00"]
    got = await registry.get_runs(["r03", "r04", "zz"])
    assert sorted(got) == ["r03", "r04"] and got["r03"].created_at == at(1)


async def test_put_run_is_idempotent_upsert(registry: Registry) -> None:
    await registry.touch_threads({"t1": None})
    record = run(
        "r1",
        status=RunStatus.INTERRUPTED,
        input={"a": [1, 2]},
        output={"b": None},
        error=None,
        metadata={"m": "x"},
        config={"configurable": {"k": 1}},
        user_id="u1",
        multitask="ENQUEUE",
        created_at=at(1),
        started_at=at(2),
        finished_at=at(3),
        lease_owner="w",
        lease_expires_at=at(4),
    )
    await registry.put_run(record)
    await registry.put_run(record)
    assert await registry.get_run("r1") == record
    page = await registry.list_runs(RunFilter(), first=10)
    assert page.items == [record]

    changed = replace(record, status=RunStatus.SUCCESS, output=None, lease_owner=None)
    await registry.put_run(changed)
    assert await registry.get_run("r1") == changed


async def test_delete_run_deletes_its_events(registry: Registry) -> None:
    await registry.admit_run(run("r1"), reject_if_busy=False, events=events("r1", "t1", 1, 2))
    await registry.admit_run(run("r2"), reject_if_busy=False, events=events("r2", "t1", 1))
    assert await registry.delete_run("r1") is True
    assert await registry.get_run("r1") is None and await registry.list_events("r1") == []
    assert await registry.last_seq("r2") == 1
    assert await registry.delete_run("r1") is False


async def test_start_run_marks_it_running_and_names_its_last_seq(registry: Registry) -> None:
    """One statement for a claimed run's start: RUNNING since the given time, as stored,
    with the seq its events' numbering goes on after; its lease and fields untouched."""
    await registry.admit_run(
        run("r1", input={"a": 1}), reject_if_busy=False, events=events("r1", "t1", 1)
    )
    await registry.store_events(events("r1", "t1", 2, 3))
    await registry.admit_run(run("r2", "t2"), reject_if_busy=False)  # no events at all
    now = datetime.now(UTC)
    (claimed,) = await registry.claim_runs("w1", now=now, until=now + timedelta(minutes=1), limit=1)
    assert claimed.run_id == "r1" and claimed.status is RunStatus.PENDING

    started = datetime(2025, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    record, last = await registry.start_run("r1", started)
    assert last == 3
    assert record is not None and record.status is RunStatus.RUNNING
    assert record.started_at == started and record.started_at.utcoffset() == timedelta(0)
    assert (record.lease_owner, record.lease_expires_at) == ("w1", claimed.lease_expires_at)
    assert record.input == {"a": 1}
    assert await registry.get_run("r1") == record
    assert await registry.last_seq("r1") == 3

    record2, last2 = await registry.start_run("r2", started)
    assert record2 is not None and record2.status is RunStatus.RUNNING and last2 == 0
    assert await registry.start_run("missing", started) == (None, 0)


async def test_no_run_is_claimed_beside_a_later_run_of_its_thread_held_under_a_live_lease(
    registry: Registry,
) -> None:
    """Two runs of one thread recorded in the other order than their created_at (an
    admission stamps its run after the thread's newest, but an outage's copy puts a run
    as the fallback stamped it): the later-created one leased at its admission, the
    earlier one queued unleased. The earlier one is the oldest unfinished run of the
    thread, yet not claimable while the later one's lease is live; once that lapses,
    the oldest is claimed as before."""
    now = datetime.now(UTC)
    held = now + timedelta(seconds=30)
    later, _ = await registry.admit_run(
        run("r2", created_at=now, lease_owner="w1", lease_expires_at=held),
        reject_if_busy=False,
    )
    assert later is not None and later.lease_owner == "w1"
    await registry.put_run(run("r1", created_at=now - timedelta(seconds=1)))
    earlier = await registry.get_run("r1")
    assert earlier is not None and earlier.lease_owner is None
    await registry.admit_run(run("r3", "t2", created_at=now), reject_if_busy=False)
    claimed = await registry.claim_runs("w2", now=now, until=now + timedelta(hours=1), limit=5)
    assert [r.run_id for r in claimed] == ["r3"], "not r1 while r2 is held"
    assert not await registry.has_claimable(now=now, until=held), "nor is it claimable"
    lapsed = held + timedelta(seconds=1)
    assert await registry.has_claimable(now=lapsed, until=lapsed + timedelta(30))
    claimed = await registry.claim_runs("w2", now=lapsed, until=lapsed + timedelta(30), limit=5)
    assert [r.run_id for r in claimed] == ["r1"], "r2's lease lapsed: the oldest again"


async def test_has_claimable_answers_what_a_claim_would_find(registry: Registry) -> None:
    """Read only, on the claim's own condition: unleased or lapsed, not cancelled, the
    oldest unfinished run of its thread, of the graphs and runs asked about."""
    now = datetime.now(UTC)
    until = now + timedelta(seconds=30)
    assert not await registry.has_claimable(now=now, until=until)
    await registry.admit_run(run("r1", created_at=now), reject_if_busy=False)
    await registry.admit_run(run("r2", created_at=now + timedelta(seconds=1)), reject_if_busy=False)
    assert await registry.has_claimable(now=now, until=until)
    assert await registry.has_claimable(now=now, until=until, run_ids=["r1"])
    assert not await registry.has_claimable(now=now, until=until, run_ids=["r2"]), "behind r1"
    assert not await registry.has_claimable(now=now, until=until, run_ids=[])
    assert not await registry.has_claimable(now=now, until=until, graphs=["another"])
    stored = await registry.get_run("r1")
    assert stored is not None
    assert await registry.has_claimable(now=now, until=until, graphs=[stored.graph])
    assert (await registry.get_run("r1")) == stored, "nothing leased by the look"
    claimed = await registry.claim_runs("w1", now=now, until=until, limit=5)
    assert [r.run_id for r in claimed] == ["r1"]
    assert not await registry.has_claimable(now=now, until=until), "r2 waits for r1"
    assert await registry.has_claimable(now=until + timedelta(seconds=1), until=until), (
        "r1's lease lapsed: claimable again"
    )
