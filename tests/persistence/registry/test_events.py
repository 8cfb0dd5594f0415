"""Run events in the registry: stored in order, never twice, never for a missing run."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from code_hero.errors import ConflictError
from code_hero.persistence.records import EventRecord, Registry, RunStatus, StepRecord
from code_hero.persistence.registry import PostgresRegistry
from tests.persistence.registry.support import at, events, run


async def test_events_in_order_with_after_seq_and_limit(registry: Registry) -> None:
    await registry.admit_run(run("r1", thread_id="t9"), reject_if_busy=False)
    assert await registry.last_seq("r1") == 0
    await registry.store_events(events("r1", "t9", 3, 1, 2))
    await registry.store_events(events("r1", "t9", 4, 5, type="values"))
    await registry.store_events([])

    stored = await registry.list_events("r1")
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5]
    first = stored[0]
    assert (first.run_id, first.thread_id, first.type) == ("r1", "t9", "token")
    assert first.payload == {"n": 1, "text": "tok1"} and first.at == at(1)
    assert [e.type for e in stored[3:]] == ["values", "values"]
    assert [e.seq for e in await registry.list_events("r1", after_seq=2)] == [3, 4, 5]
    assert [e.seq for e in await registry.list_events("r1", after_seq=1, limit=2)] == [2, 3]
    assert await registry.list_events("r1", after_seq=5) == []
    assert await registry.last_seq("r1") == 5


async def test_events_of_some_types_only(registry: Registry) -> None:
    await registry.admit_run(run("r1", thread_id="t9"), reject_if_busy=False)
    await registry.store_events(events("r1", "t9", 1, 2, 3))
    await registry.store_events(events("r1", "t9", 4, 5, type="values"))
    await registry.store_events(events("r1", "t9", 6))

    def seqs(found: list[EventRecord]) -> list[int]:
        return [e.seq for e in found]

    assert seqs(await registry.list_events("r1", types=["values"])) == [4, 5]
    assert seqs(await registry.list_events("r1", types={"token", "values"})) == [1, 2, 3, 4, 5, 6]
    assert seqs(await registry.list_events("r1", after_seq=2, types=["token"])) == [3, 6]
    assert seqs(await registry.list_events("r1", after_seq=2, limit=1, types=["values"])) == [4]
    assert await registry.list_events("r1", types=[]) == []
    assert await registry.list_events("r1", types=["other"]) == []


async def test_duplicate_seq_raises_and_stores_nothing_of_the_batch(registry: Registry) -> None:
    await registry.admit_run(run("r1"), reject_if_busy=False, events=events("r1", "t1", 1, 2))
    with pytest.raises(ConflictError):
        await registry.store_events(events("r1", "t1", 3, 4, 2))
    with pytest.raises(ConflictError):
        await registry.store_events(events("r1", "t1", 5, 5))
    assert [e.seq for e in await registry.list_events("r1")] == [1, 2]
    # The registry is still usable after the failed transaction.
    await registry.store_events(events("r1", "t1", 3))
    assert await registry.last_seq("r1") == 3
    # A copy skips what is stored already.
    await registry.put_events(events("r1", "t1", 3, 4))
    assert [e.seq for e in await registry.list_events("r1")] == [1, 2, 3, 4]


async def test_events_of_a_missing_run_are_dropped(registry: Registry) -> None:
    await registry.store_events(events("nope", "t1", 1))
    await registry.put_events(events("nope", "t1", 2))
    assert await registry.list_events("nope") == [] and await registry.last_seq("nope") == 0


async def test_a_batch_stores_events_and_run_fields_together(registry: Registry) -> None:
    await registry.admit_run(run("r1", thread_id="t1"), reject_if_busy=False)
    await registry.admit_run(run("r2", thread_id="t2"), reject_if_busy=False)
    fields = {"input_tokens": 7, "output_tokens": 3}
    # r2's fields ride along without events of its own; a run that is gone is skipped.
    await registry.store_batch(
        events("r1", "t1", 1, 2), {"r1": fields, "r2": {"input_tokens": 1}, "gone": fields}
    )
    assert [e.seq for e in await registry.list_events("r1")] == [1, 2]
    r1, r2 = await registry.get_run("r1"), await registry.get_run("r2")
    assert r1 is not None and (r1.input_tokens, r1.output_tokens) == (7, 3)
    assert r2 is not None and r2.input_tokens == 1
    # One transaction: a conflicting event leaves the fields as they were.
    with pytest.raises(ConflictError):
        await registry.store_batch(events("r1", "t1", 2), {"r1": {"input_tokens": 99}})
    r1 = await registry.get_run("r1")
    assert r1 is not None and r1.input_tokens == 7
    with pytest.raises(TypeError):
        await registry.store_batch([], {"r1": {"no_such_field": 1}})


async def test_a_batch_under_a_lease_leaves_out_the_runs_another_holds(
    registry: Registry,
) -> None:
    # An executor back from a stall past its lease stored its batch whoever held the run
    # now: its events took seqs the new holder numbers too (the holder's collided).
    now = at(0)
    for run_id in ("mine", "taken", "ended", "free"):
        await registry.admit_run(run(run_id, thread_id=f"t-{run_id}"), reject_if_busy=False)
    later = at(3600)
    for run_id, owner in (("mine", "me"), ("taken", "other"), ("ended", "me")):
        (claimed,) = await registry.claim_runs(
            owner, now=now, until=later, limit=1, run_ids=[run_id]
        )
        assert claimed.run_id == run_id
    await registry.update_run("ended", status=RunStatus.SUCCESS, lease_owner=None)
    fields = {"input_tokens": 5}
    batch = [
        *events("mine", "t-mine", 1, 2),
        *events("taken", "t-taken", 1),
        *events("ended", "t-ended", 1),
        *events("free", "t-free", 1),  # not under a lease: stored as ever
    ]
    held_by = {"mine": "me", "taken": "me", "ended": "me"}
    lost = await registry.store_batch(
        batch, {"mine": fields, "taken": fields, "ended": fields}, held_by=held_by
    )
    assert lost == {"taken", "ended"}
    assert [e.seq for e in await registry.list_events("mine")] == [1, 2]
    assert [e.seq for e in await registry.list_events("free")] == [1]
    assert await registry.list_events("taken") == [] and await registry.list_events("ended") == []
    for run_id, tokens in (("mine", 5), ("taken", 0), ("ended", 0)):
        row = await registry.get_run(run_id)
        assert row is not None and (row.input_tokens or 0) == tokens
    # The holder numbers on from what it found: nothing collides.
    await registry.store_batch(events("taken", "t-taken", 1), {}, held_by={"taken": "other"})
    assert [e.seq for e in await registry.list_events("taken")] == [1]


async def test_a_batchs_run_fields_land_as_set(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runs' fields of a batch land as they were set, each run its own; on PostgreSQL
    in one UPDATE for the runs that share their field names (issue 15)."""
    ids = [f"r{i}" for i in range(4)]
    for run_id in ids:
        await registry.admit_run(run(run_id, thread_id=f"t-{run_id}"), reject_if_busy=False)
    steps = [
        StepRecord("n0", "", at(1), at(2)),
        StepRecord("n1", "sub:1", at(3), None, "boom \u00e9"),
    ]
    fields = {
        "r0": {"steps": tuple(steps), "input_tokens": 7, "output_tokens": 5},
        "r1": {"steps": (), "input_tokens": 2**40, "output_tokens": 3},
        "r2": {"steps": tuple(steps[:1]), "input_tokens": 0, "output_tokens": 0},
        "r3": {"started_at": at(9)},
    }
    statements: list[str] = []
    if isinstance(registry, PostgresRegistry):
        real = psycopg.AsyncCursor.execute

        async def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            statements.append(str(query))
            return await real(self, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.AsyncCursor, "execute", counted)
    await registry.store_batch(events("r0", "t-r0", 1), fields)
    for run_id, want in fields.items():
        got = await registry.get_run(run_id)
        assert got is not None
        assert {name: getattr(got, name) for name in want} == want, run_id
    if isinstance(registry, PostgresRegistry):
        updates = [s for s in statements if s.startswith("UPDATE code_hero_runs")]
        assert len(updates) == 2  # r0-r2 together, r3 alone (fields of its own)


async def test_a_batch_of_events_is_one_insert_on_postgres(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not isinstance(registry, PostgresRegistry):
        pytest.skip("psycopg's executemany is PostgreSQL's")
    await registry.admit_run(run("r1"), reject_if_busy=False, events=events("r1", "t1", 1))
    statements: list[str] = []
    real = psycopg.AsyncCursor.execute

    async def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(query))
        return await real(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counted)
    monkeypatch.setattr(psycopg.AsyncCursor, "executemany", None)  # not used for a batch
    await registry.store_events(events("r1", "t1", *range(2, 40)))
    await registry.put_events(events("r1", "t1", *range(30, 45)))  # ON CONFLICT DO NOTHING
    inserts = [s for s in statements if s.startswith("INSERT INTO code_hero_run_events")]
    assert len(inserts) == 2
    assert [e.seq for e in await registry.list_events("r1")] == list(range(1, 45))


async def test_thread_seqs_are_each_run_s_last_oldest_run_first(registry: Registry) -> None:
    assert await registry.thread_seqs("t9") == {}
    await registry.admit_run(run("r-b", thread_id="t9", created_at=at(2)), reject_if_busy=False)
    for n, run_id in ((1, "r-a"), (3, "r-c")):  # as copies put them: stamped as they were
        await registry.put_run(run(run_id, thread_id="t9", created_at=at(n)))
    await registry.admit_run(run("r-other", thread_id="t8"), reject_if_busy=False)
    await registry.store_events(events("r-a", "t9", 1, 2, 3) + events("r-b", "t9", 1))
    await registry.store_events(events("r-other", "t8", 1, 2))
    seqs = await registry.thread_seqs("t9")
    assert list(seqs.items()) == [("r-a", 3), ("r-b", 1), ("r-c", 0)]
    assert await registry.delete_run("r-a")
    assert await registry.thread_seqs("t9") == {"r-b": 1, "r-c": 0}
    await registry.delete_thread("t9")
    assert await registry.thread_seqs("t9") == {}
    assert await registry.thread_seqs("t8") == {"r-other": 2}


async def test_thread_seqs_since_are_of_the_runs_not_finished_or_created_since(
    registry: Registry,
) -> None:
    """What a thread's subscriber needs a start for: a run created before `since` and
    finished emits nothing more."""
    for n, run_id in ((1, "r-done"), (2, "r-going"), (3, "r-late"), (9, "r-new")):
        await registry.admit_run(
            run(run_id, thread_id="t9", created_at=at(n)), reject_if_busy=False
        )
    await registry.store_events(events("r-done", "t9", 1, 2) + events("r-new", "t9", 1))
    await registry.update_run("r-done", status=RunStatus.SUCCESS, finished_at=at(4))
    await registry.update_run("r-late", status=RunStatus.ERROR, finished_at=at(8))
    await registry.update_run("r-new", status=RunStatus.SUCCESS, finished_at=at(10))
    assert list((await registry.thread_seqs("t9", since=at(9))).items()) == [
        ("r-going", 0),
        ("r-new", 1),
    ]
    assert list(await registry.thread_seqs("t9", since=at(10))) == ["r-going"]
    assert list(await registry.thread_seqs("t9")) == ["r-done", "r-going", "r-late", "r-new"]
