"""Threads in the registry: stored, touched, listed, filtered, paged, deleted."""

from __future__ import annotations

import base64
import json
from dataclasses import FrozenInstanceError, fields, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import psycopg
import pytest

from code_hero.errors import BadInputError, NotFoundError
from code_hero.persistence.records import (
    Registry,
    RunFilter,
    RunStatus,
    SortDirection,
    ThreadFilter,
    ThreadOrder,
    ThreadRecord,
    ThreadSortField,
    ThreadStatus,
)
from code_hero.persistence.registry.cursors import thread_cursor
from code_hero.persistence.registry.postgres import PostgresRegistry
from tests.persistence.registry.support import at, events, put, run, thread


def newest_first(records: list[ThreadRecord]) -> list[str]:
    ordered = sorted(records, key=lambda r: (r.updated_at, r.thread_id), reverse=True)
    return [r.thread_id for r in ordered]


async def test_put_thread_stores_a_thread_as_given(registry: Registry) -> None:
    plus2 = timezone(timedelta(hours=2))
    record = thread("t1", at(1), user_id="u1", metadata={"k": "v"}, status=ThreadStatus.BUSY)
    await registry.put_thread(replace(record, created_at=record.created_at.astimezone(plus2)))
    stored = await registry.get_thread("t1")
    assert stored == record and stored.created_at.utcoffset() == timedelta(0)

    # Again: the stored thread is replaced, timestamps included; a copy is idempotent.
    replaced = replace(
        record, user_id="u2", metadata={"other": [1, 2]}, status=ThreadStatus.IDLE, updated_at=at(2)
    )
    await registry.put_thread(replaced)
    await registry.put_thread(replaced)
    assert await registry.get_thread("t1") == replaced
    assert await registry.get_thread("missing") is None


async def test_touch_threads_creates_missing_and_keeps_owner(registry: Registry) -> None:
    old = await put(registry, "owned", at(1), user_id="alice", metadata={"keep": True})
    await put(registry, "orphan", at(2))
    await registry.touch_threads({"owned": None, "orphan": "bob", "new": "carol", "anon": None})

    got = await registry.get_threads(["owned", "orphan", "new", "anon"])
    assert got["owned"].user_id == "alice"
    assert got["owned"].metadata == {"keep": True}
    assert got["owned"].updated_at > old.updated_at
    assert got["orphan"].user_id == "bob"
    assert got["new"].user_id == "carol" and got["new"].status is ThreadStatus.IDLE
    assert got["new"].metadata == {}
    assert got["anon"].user_id is None
    # One batch, one time: every touched thread has the same updated_at.
    assert len({r.updated_at for r in got.values()}) == 1

    await registry.touch_threads({"owned": "mallory"})
    owned = await registry.get_thread("owned")
    assert owned is not None and owned.user_id == "alice"


async def test_get_threads_and_thread_ids(registry: Registry) -> None:
    a = await put(registry, "a", at(1))
    await put(registry, "b", at(2))
    assert await registry.get_threads([]) == {}
    got = await registry.get_threads(["a", "b", "a", "nope"])
    assert sorted(got) == ["a", "b"] and got["a"] == a
    assert sorted(await registry.thread_ids()) == ["a", "b"]
    assert await registry.thread_ids(updated_before=a.updated_at) == []
    assert await registry.thread_ids(updated_before=a.updated_at + timedelta(microseconds=1)) == [
        "a"
    ]


async def test_get_threads_of_one_id_is_get_thread(registry: Registry) -> None:
    a = await put(registry, "a", at(1))
    assert await registry.get_threads(["a"]) == {"a": a} == {"a": await registry.get_thread("a")}
    assert await registry.get_threads(["a", "a"]) == {"a": a}
    assert await registry.get_threads(["nope"]) == {}


async def test_one_id_is_no_array_for_postgres(
    pg_registry: PostgresRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread(id:)'s record is read with the id as it is: no array for psycopg to dump."""
    a = await put(pg_registry, "a", at(1))
    sent: list[Any] = []
    execute = psycopg.AsyncCursor.execute

    async def recorded(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        sent.extend(params or ())
        return await execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", recorded)
    assert await pg_registry.get_threads(["a"]) == {"a": a}
    assert "a" in sent and not any(isinstance(p, list) for p in sent)


async def test_paging_250_threads_yields_each_once_in_order(registry: Registry) -> None:
    records = [await put(registry, f"s{i:03}", at(i)) for i in range(150)]
    # 100 threads touched in one batch share updated_at: thread_id breaks the tie.
    await registry.touch_threads({f"b{i:03}": None for i in range(100)})
    records += (await registry.get_threads([f"b{i:03}" for i in range(100)])).values()
    expected = newest_first(records)

    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = await registry.list_threads(ThreadFilter(), first=20, after=after)
        seen += [t.thread_id for t in page.items]
        pages += 1
        if pages == 3:
            # An already-listed thread moves to the front: later pages do not repeat it.
            await registry.touch_threads({seen[5]: None})
        if not page.has_next_page:
            break
        assert len(page.items) == 20
        after = page.end_cursor
    assert pages == 13 and len(page.items) == 10
    assert seen == expected

    first = await registry.list_threads(ThreadFilter(), first=1)
    assert [t.thread_id for t in first.items] == [expected[5]]


async def test_list_threads_filters(registry: Registry) -> None:
    t1 = await put(registry, "t1", at(1), user_id="u1")
    t2 = await put(registry, "t2", at(2), user_id="u2", status=ThreadStatus.BUSY)
    t3 = await put(registry, "t3", at(3), user_id="u1", status=ThreadStatus.BUSY)
    assert t1.updated_at < t2.updated_at < t3.updated_at

    async def ids(**kw: Any) -> list[str]:
        page = await registry.list_threads(ThreadFilter(**kw), first=10)
        return [t.thread_id for t in page.items]

    assert await ids() == ["t3", "t2", "t1"]
    assert await ids(user_id="u1") == ["t3", "t1"]
    assert await ids(user_id="nobody") == []
    assert await ids(status=ThreadStatus.BUSY) == ["t3", "t2"]
    assert await ids(user_id="u1", status=ThreadStatus.BUSY) == ["t3"]
    assert await ids(updated_after=t1.updated_at) == ["t3", "t2"]  # strictly after
    assert await ids(updated_before=t3.updated_at) == ["t2", "t1"]  # strictly before
    assert await ids(updated_after=t1.updated_at, updated_before=t3.updated_at) == ["t2"]
    # Any aware datetime works, whatever its zone.
    plus2 = timezone(timedelta(hours=2))
    assert await ids(updated_after=t2.updated_at.astimezone(plus2)) == ["t3"]

    # Filters and cursors combine: page 2 of user u1's threads.
    page = await registry.list_threads(ThreadFilter(user_id="u1"), first=1)
    assert page.has_next_page
    rest = await registry.list_threads(ThreadFilter(user_id="u1"), first=1, after=page.end_cursor)
    assert [t.thread_id for t in rest.items] == ["t1"] and not rest.has_next_page


async def test_metadata_containment(registry: Registry) -> None:
    await put(
        registry,
        "full",
        metadata={
            "env": "prod",
            "n": 3,
            "flag": True,
            "none": None,
            "tags": ["a", "b"],
            "mixed": [1, "2", True, None, [3, 4], {"k": "v", "z": 0}, {'q"': 1}],
            "nested": {"team": {"name": "core", "size": 5}, "x": "y"},
            "dotted.key": "d",
            "it's": "q",
            'say "hi"': {'in"ner': "quoted"},
            "back\\slash": 1,
            "日本": {"é": "w", "k\tt": ["🔑"]},
        },
    )
    await put(
        registry,
        "other",
        metadata={"env": "dev", "n": "3", "flag": 1, "nested": {"team": "core"}, "tags": "a"},
    )
    await put(registry, "empty")

    async def ids(metadata: dict[str, Any]) -> list[str]:
        page = await registry.list_threads(ThreadFilter(metadata=metadata), first=10)
        return sorted(t.thread_id for t in page.items)

    assert await ids({}) == ["empty", "full", "other"]
    assert await ids({"env": "prod"}) == ["full"]
    assert await ids({"env": "prod", "n": 3}) == ["full"]
    assert await ids({"env": "prod", "n": 4}) == []
    assert await ids({"n": 3}) == ["full"]  # the string "3" is not the number 3
    assert await ids({"n": 3.0}) == ["full"]
    assert await ids({"flag": True}) == ["full"]  # true is not 1
    assert await ids({"flag": 1}) == ["other"]
    assert await ids({"none": None}) == ["full"]  # a null value is not a missing key
    assert await ids({"missing": None}) == []
    assert await ids({"tags": ["a", "b"]}) == ["full"]
    assert await ids({"tags": "a"}) == ["other"]
    # An array contains the arrays whose every element it contains, in any order, as
    # PostgreSQL's @> has it: on SQLite only an equal array matched.
    assert await ids({"tags": ["a"]}) == ["full"]
    assert await ids({"tags": ["b", "a", "b"]}) == ["full"]
    assert await ids({"tags": []}) == ["full"]
    assert await ids({"tags": ["a", "c"]}) == []
    assert await ids({"mixed": [1.0, "2", True, None]}) == ["full"]
    assert await ids({"mixed": ["1"]}) == [] and await ids({"mixed": [2]}) == []
    assert await ids({"mixed": [False]}) == [] and await ids({"mixed": [3]}) == []
    assert await ids({"mixed": [[4]]}) == ["full"] and await ids({"mixed": [[5]]}) == []
    assert await ids({"mixed": [[]]}) == ["full"] and await ids({"mixed": [{}]}) == ["full"]
    assert await ids({"mixed": [{"k": "v"}, {'q"': 1}]}) == ["full"]
    assert await ids({"mixed": [{"k": "w"}]}) == [] and await ids({"mixed": [{'q"': 2}]}) == []
    assert await ids({'say "hi"': {'in"ner': ["quoted"]}}) == []
    assert await ids({"nested": {"team": {"name": "core"}}}) == ["full"]
    assert await ids({"nested": {"team": {"name": "core", "size": 5}, "x": "y"}}) == ["full"]
    assert await ids({"nested": {"team": {"name": "other"}}}) == []
    assert await ids({"nested": {"team": "core"}}) == ["other"]
    assert await ids({"nested": {"team": {}}}) == ["full"]
    assert await ids({"nested": {}}) == ["full", "other"]
    assert await ids({"dotted.key": "d"}) == ["full"]
    assert await ids({"dotted": {"key": "d"}}) == []
    assert await ids({"it's": "q"}) == ["full"]
    assert await ids({'say "hi"': {'in"ner': "quoted"}}) == ["full"]
    assert await ids({'say "hi"': {'in"ner': "other"}}) == []
    assert await ids({"back\\slash": 1}) == ["full"]
    # Keys stored escaped (json.dumps writes non-ASCII and control characters as \u
    # escapes), which a SQLite JSON path matched to nothing.
    assert await ids({"日本": {"é": "w"}}) == ["full"]
    assert await ids({"日本": {"k\tt": ["🔑"]}}) == ["full"]
    assert await ids({"日本": {"é": "v"}}) == []


async def test_malformed_cursor_is_bad_input(registry: Registry) -> None:
    await registry.admit_run(run("r1"), reject_if_busy=False)
    run_cursor = (await registry.list_runs(RunFilter(), first=1)).end_cursor
    assert run_cursor is not None

    def b64(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()

    for bad in [
        "garbage!",
        "",
        "e30=",  # {}
        b64(["thread", "not a time", "t1"]),
        b64(["thread", "2025-01-01T00:00:00", "t1"]),  # naive
        b64(["thread", "2025-01-01T00:00:00+00:00", 7]),
        run_cursor,  # a cursor of another listing
    ]:
        with pytest.raises(BadInputError):
            await registry.list_threads(ThreadFilter(), first=5, after=bad)
    with pytest.raises(BadInputError):
        await registry.list_runs(RunFilter(), first=5, after="garbage!")
    with pytest.raises(BadInputError):
        await registry.list_threads(ThreadFilter(), first=-1)


async def test_naive_datetimes_are_refused(registry: Registry) -> None:
    with pytest.raises(BadInputError):
        await registry.admit_run(run("r1", created_at=datetime(2025, 1, 1)), reject_if_busy=False)
    with pytest.raises(BadInputError):
        await registry.put_thread(thread("t1", datetime(2025, 1, 1)))
    with pytest.raises(BadInputError):
        await registry.list_threads(ThreadFilter(updated_after=datetime(2025, 1, 1)), first=1)


async def test_delete_thread_deletes_runs_and_events(registry: Registry) -> None:
    for run_id, thread_id in [("r1", "t1"), ("r2", "t1"), ("r3", "t2")]:
        await registry.admit_run(
            run(run_id, thread_id), reject_if_busy=False, events=events(run_id, thread_id, 1, 2, 3)
        )

    assert await registry.delete_thread("t1") == (True, 2)
    assert await registry.get_thread("t1") is None
    assert await registry.get_runs(["r1", "r2", "r3"]) == {"r3": await registry.get_run("r3")}
    assert await registry.list_events("r1") == [] and await registry.last_seq("r2") == 0
    assert len(await registry.list_events("r3")) == 3
    assert await registry.delete_thread("t1") == (False, 0)
    # A run belongs to a thread: none is stored for a thread that is gone.
    with pytest.raises(NotFoundError):
        await registry.put_run(run("r4", "t1"))


async def test_the_last_step_of_a_deletion_takes_only_a_marked_row(registry: Registry) -> None:
    # delete_thread(marked=token) ends a deletion in steps: the row it marked goes with its
    # runs; a row made anew under the id since (not marked) stays, with its runs.
    await registry.admit_run(run("r1", "t1"), reject_if_busy=False)
    mark = await registry.start_deletion("t1")
    assert mark is not None and mark.marked
    nothing = await registry.start_deletion("t2")  # no row: none to mark
    assert nothing is not None and not nothing.marked
    token = mark.token
    assert await registry.delete_thread("t1", marked=token) == (True, 1)
    await registry.admit_run(run("r2", "t1"), reject_if_busy=False)  # made anew

    assert await registry.delete_thread("t1", marked=token) == (False, 0)
    assert await registry.get_thread("t1") is not None
    assert await registry.get_run("r2") is not None
    assert await registry.delete_thread("t1") == (True, 1)  # unconditional: it goes


async def test_the_last_step_of_a_deletion_leaves_another_deletions_mark(
    registry: Registry,
) -> None:
    # A row made anew after deletion A marked the id, and marked by deletion D since, is
    # D's: A's last step leaves it (D stops its runs before it ends it). A deletion that
    # marks a row marked already joins that deletion (the same token).
    await registry.admit_run(run("r1", "t1"), reject_if_busy=False)
    first = await registry.start_deletion("t1")
    assert first is not None and await registry.start_deletion("t1") == first
    assert await registry.delete_thread("t1", marked=first.token) == (True, 1)
    await registry.admit_run(run("r2", "t1"), reject_if_busy=False)  # made anew
    second = await registry.start_deletion("t1")
    assert second is not None and second.token != first.token

    assert await registry.delete_thread("t1", marked=first.token) == (False, 0)
    assert await registry.get_run("r2") is not None
    assert await registry.delete_thread("t1", marked=second.token) == (True, 1)


async def test_a_mark_copied_back_keeps_its_token(registry: Registry) -> None:
    # The copy-back (put_thread) takes a marked row with its token, so the deletion that
    # marked it ends it where the row is now; a row marked with no token (before the
    # token's migration) is any deletion's to mark with its own; and a copy onto a row
    # another deletion marked keeps that mark (that deletion ends only a row it marked).
    # Each row here is put back with the created_at of one deleted: its tombstone is
    # forgotten first (a copy of a deleted thread is refused: test_tombstones).
    async def forget() -> None:
        await registry.forget_deleted_threads(datetime.now(UTC) + timedelta(days=1), limit=10)

    await registry.admit_run(run("r1", "t1"), reject_if_busy=False)
    mark = await registry.start_deletion("t1")
    marked = await registry.get_thread("t1", expired=True)
    assert mark is not None and marked is not None and marked.deletion_token == mark.token
    token = mark.token
    assert await registry.delete_thread("t1", marked=token) == (True, 1)
    await forget()
    await registry.put_thread(replace(marked, deletion_token=None))  # marked, no token
    again = await registry.start_deletion("t1")
    assert again is not None and again.token != token
    await registry.put_thread(marked)  # copied back: the other deletion's mark stays

    assert await registry.delete_thread("t1", marked=token) == (False, 0)
    assert await registry.delete_thread("t1", marked=again.token) == (True, 0)
    unmarked = replace(marked, ttl_seconds=None, expires_at=None, deletion_token=None)
    for before in (None, unmarked):  # no row, a row no deletion marked
        await forget()
        if before is not None:
            await registry.put_thread(before)
        await registry.put_thread(marked)
        assert await registry.delete_thread("t1", marked=token) == (True, 0)


async def test_a_thread_marked_for_deletion_is_read_for_a_copy_only(registry: Registry) -> None:
    # start_deletion marks the row (ttl 0): every read leaves it out, but a copy of the
    # thread (the outage's copy-back) reads it and its runs as they are.
    await registry.admit_run(run("r1", "t1"), reject_if_busy=False)
    assert await registry.start_deletion("t1")
    assert await registry.get_thread("t1") is None
    assert (await registry.list_runs(RunFilter(thread_id="t1"), first=10)).items == []
    marked = await registry.get_thread("t1", expired=True)
    assert marked is not None and marked.ttl_seconds == 0
    listed = await registry.list_runs(RunFilter(thread_id="t1"), first=10, expired=True)
    assert [r.run_id for r in listed.items] == ["r1"]


def test_a_cursor_is_the_compact_json_of_its_items() -> None:
    """Cursors handed out before keep meaning the same: the bytes are json.dumps' own."""
    updated = datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)
    record = replace(thread("t-1.a:b_c", updated), created_at=updated - timedelta(days=1))
    by_creation = ThreadOrder(ThreadSortField.CREATED_AT, SortDirection.ASC)

    def expected(at: datetime, tag: str) -> str:
        raw = json.dumps(["thread", at.isoformat(), "t-1.a:b_c", tag], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode("ascii")

    assert thread_cursor(record) == expected(updated, "UPDATED_AT:DESC")
    assert thread_cursor(record, by_creation) == expected(record.created_at, "CREATED_AT:ASC")
    # Times in UTC written by orjson, others by isoformat: the same text either way.
    for when in (
        updated.replace(microsecond=0),  # no fraction written
        updated.replace(microsecond=1000),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        updated.astimezone(timezone(timedelta(hours=-3, minutes=-30))),
        updated.astimezone(ZoneInfo("Etc/UTC")),
    ):
        record = replace(record, updated_at=when)
        assert thread_cursor(record) == expected(when, "UPDATED_AT:DESC"), when


async def test_a_thread_read_is_a_whole_frozen_record(registry: Registry) -> None:
    # Rows become records without ThreadRecord's __init__ (a page builds one a row):
    # each has every field, compares and copies as one built by it, and stays frozen.
    now = datetime.now(UTC)
    record = thread("t1", now, user_id="u1", metadata={"k": [1, "v"]}, ttl_seconds=3600)
    await registry.put_thread(record)
    page = await registry.list_threads(ThreadFilter(), first=10)
    for stored in [await registry.get_thread("t1"), *page.items]:
        assert stored is not None
        assert set(vars(stored)) == {f.name for f in fields(ThreadRecord)}
        assert stored == replace(stored) == replace(record, expires_at=stored.expires_at)
        assert stored.expires_at == now + timedelta(seconds=3600)
        assert type(stored.status) is ThreadStatus and stored.status is ThreadStatus.IDLE
        with pytest.raises(FrozenInstanceError):
            stored.status = ThreadStatus.BUSY  # type: ignore[misc]


async def test_get_threads_of_one_id_reads_any_allowed_id_as_several_do(
    registry: Registry,
) -> None:
    """Review (rgql): the one-id equality and the several-id array find the same rows,
    for ids of every character a thread id may hold, and none for a missing id."""
    ids = ["a.b", "a_b", "tenant:ticket-42", "1699.0001", "A", "0", "x" * 128]
    stored = {tid: await put(registry, tid, at(i)) for i, tid in enumerate(ids)}
    for tid in [*ids, "a", "a-b", "missing"]:
        one = await registry.get_threads([tid])
        assert one == ({tid: stored[tid]} if tid in stored else {}), tid
        assert one == await registry.get_threads([tid, "zz"])  # the array path


async def test_non_finite_numbers_are_stored_as_null(registry: Registry) -> None:
    """NaN and infinities are not JSON: both registries store null for each (json.dumps
    wrote `Infinity`, text SQLite's JSON functions refuse, and every metadata filter
    over the table then failed with "malformed JSON")."""
    odd = {"k": 1, "x": float("inf"), "l": [float("nan"), -float("inf"), 2.5]}
    stored = await put(registry, "odd", metadata=odd)
    await put(registry, "plain", metadata={"k": 1})
    assert stored.metadata == {"k": 1, "x": None, "l": [None, None, 2.5]}

    page = await registry.list_threads(ThreadFilter(metadata={"k": 1}), first=10)
    assert sorted(t.thread_id for t in page.items) == ["odd", "plain"]
    page = await registry.list_threads(ThreadFilter(metadata={"x": None}), first=10)
    assert [t.thread_id for t in page.items] == ["odd"]

    nan = float("nan")
    done = run("r1", "odd", status=RunStatus.SUCCESS, metadata={"k": 1, "x": nan}, created_at=at(1))
    await registry.put_run(replace(done, output={"v": nan}, input={"n": [float("inf")]}))
    runs = await registry.list_runs(RunFilter(metadata={"k": 1}), first=10)
    assert [(r.metadata, r.output, r.input) for r in runs.items] == [
        ({"k": 1, "x": None}, {"v": None}, {"n": [None]})
    ]


def test_a_cursor_of_a_utc_datetime_subclass_is_written_as_isoformat() -> None:
    """orjson refuses datetime subclasses (pendulum, freezegun; see schema.scalars): a
    cursor of one in UTC must still be made, with isoformat()'s text (review, 2cd1bcb)."""

    class Stamp(datetime):
        pass

    at = Stamp(2026, 12, 1, 8, 0, 0, 5, tzinfo=UTC)
    raw = orjson.dumps(["thread", at.isoformat(), "t1", "UPDATED_AT:DESC"])
    assert thread_cursor_text(at) == base64.urlsafe_b64encode(raw).decode("ascii")


def thread_cursor_text(at: datetime) -> str:
    from code_hero.persistence.registry.cursors import _encode_cursor

    return _encode_cursor("thread", at, "t1", "UPDATED_AT:DESC")
