"""Review of syncfix (55d9b9e): `Registry.copy_thread`'s guarded upsert, its `owners`
(the lease an earlier copy put each run in the primary under) and its deliveries in
chunks of `_INSERTS_A_STATEMENT`."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from code_hero.config import (
    CheckpointerConfig,
    create_memory_checkpointer,
    create_postgres_checkpointer,
)
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.entries import CopyThread
from code_hero.persistence.records import (
    EventRecord,
    RunRecord,
    RunStatus,
    ThreadRecord,
    ThreadStatus,
)
from code_hero.persistence.webhooks import DeliveryFilter, WebhookEvent, WebhookRecord
from tests.conftest import make_config


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def primary_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    return make_config(request.param, request)


async def _fallback_with(fallback: Backend, thread: ThreadRecord, runs: list[RunRecord]) -> None:
    await fallback.registry.put_thread(thread)
    for run in runs:
        await fallback.registry.put_run(run)


def _refused_once(primary: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The primary's next `copy_thread` fails before it writes (a lock timeout)."""
    registry: Any = primary.registry
    copy_thread, refused = registry.copy_thread, []

    async def once(*args: Any, **kwargs: Any) -> bool:
        if not refused:
            refused.append(True)
            raise psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
        return bool(await copy_thread(*args, **kwargs))

    monkeypatch.setattr(registry, "copy_thread", once)


@pytest.mark.parametrize("late", [False, True])
async def test_a_run_still_ours_is_ended_after_a_pass_that_failed_under_a_new_lease(
    primary_config: CheckpointerConfig, monkeypatch: pytest.MonkeyPatch, late: bool
) -> None:
    """The first pass put r1 in under exec-a. A restart here (exec-b, its lease on the
    fallback after exec-a's lapsed) and a pass that failed (a lock timeout, retried):
    `_on_time` records exec-b in `leased` before the copy goes in, and the copy does
    not. The run then ends here: the next pass's `owners` says exec-b, the primary
    still has exec-a, the copy's own, so the run is 'another executor's' and left
    RUNNING, its end never written nor announced (exec-a is gone: its lease lapses and
    the run is run again there). On time: a regression of the merge (passes at
    55d9b9e^1). Late (`_end_if_still_ours`): pre-existing, fails at both."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.BUSY, {}, now, now)
    run = RunRecord(
        "r1", "t", "g", RunStatus.RUNNING, user_id="u", created_at=now, lease_owner="exec-a"
    )
    hook = WebhookRecord(
        "wh1", "u", "https://hooks.example.com/a", (WebhookEvent.RUN_SUCCEEDED,), now
    )
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _fallback_with(fallback, thread, [run])
        await primary.registry.create_webhook(hook, "whsec_c2VjcmV0")
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        await fallback.registry.put_run(replace(run, lease_owner="exec-b"))  # a restart here
        _refused_once(primary, monkeypatch)
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await copy.unfinished().replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert there.lease_owner == "exec-a"  # nothing went in
        await fallback.registry.put_run(
            replace(run, status=RunStatus.SUCCESS, lease_owner=None, finished_at=now)
        )
        await (copy.late() if late else copy).replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert (there.status, there.lease_owner) == (RunStatus.SUCCESS, None)
        assert await primary.registry.count_deliveries(DeliveryFilter()) == 1


@pytest.mark.postgres
async def test_a_failure_in_the_third_statement_of_deliveries_commits_nothing(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """500 ends (three statements of deliveries): the third fails; the copy's one
    transaction rolls back whole: no thread, no run, no delivery (probe; passes)."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now)
    runs = [
        RunRecord(
            f"r{n:04}", "t", "g", RunStatus.SUCCESS, user_id="u",
            created_at=now + timedelta(milliseconds=n), finished_at=now,
        )
        for n in range(500)
    ]  # fmt: skip
    hook = WebhookRecord(
        "wh1", "u", "https://hooks.example.com/a", (WebhookEvent.RUN_SUCCEEDED,), now
    )
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(create_postgres_checkpointer(pg_database)) as primary,
    ):
        await _fallback_with(fallback, thread, runs)
        await primary.registry.create_webhook(hook, "whsec_c2VjcmV0")
        registry: Any = primary.registry
        inserts = registry._run_end_inserts

        def broken(run: RunRecord) -> list[tuple[str, list[Any]]]:
            made = list(inserts(run))
            if run.run_id == "r0450":  # in the third statement
                made[0] = (made[0][0].replace("INSERT", "INSERT INTO nowhere"), made[0][1])
            return made

        monkeypatch.setattr(registry, "_run_end_inserts", broken)
        with pytest.raises(psycopg.Error):
            await CopyThread("t", {}).replay(primary, fallback)
        assert await primary.registry.get_thread("t", expired=True) is None
        assert await primary.registry.get_runs([r.run_id for r in runs]) == {}
        assert await primary.registry.count_deliveries(DeliveryFilter()) == 0


async def test_a_run_released_here_between_passes_is_still_ended(
    primary_config: CheckpointerConfig,
) -> None:
    """The first pass put r1 in under exec-a; a graceful stop here released it (lease
    cleared, still RUNNING) and the second pass copied it so: the primary has it with no
    lease, `leased` still says exec-a (a run without a lease is not recorded, nor is
    the old one forgotten). The next process ends it here; the third pass's `owners`
    (exec-a) differs from the primary's (none): left RUNNING, never announced. Passes
    at 55d9b9e^1."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.BUSY, {}, now, now)
    run = RunRecord(
        "r1", "t", "g", RunStatus.RUNNING, user_id="u", created_at=now, lease_owner="exec-a"
    )
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _fallback_with(fallback, thread, [run])
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        await fallback.registry.release_runs("exec-a", ["r1"])
        await copy.unfinished().replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert there.lease_owner is None
        await fallback.registry.put_run(
            replace(run, status=RunStatus.SUCCESS, lease_owner=None, finished_at=now)
        )
        await copy.replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert there.status is RunStatus.SUCCESS


async def test_the_events_of_a_run_left_as_it_is_are_left_too(
    primary_config: CheckpointerConfig,
) -> None:
    """r1 copied in flight with event 1; exec-b took it over on the primary and ended it
    there (its own events 2, 3 up to the end). The copy leaves the run (not written,
    not announced) but still copies this replica's events of it: its seq 4 lands after
    exec-b's end in the primary's log (and a seq exec-b had not written yet would make
    exec-b's own write collide). Pre-existing (fails at 55d9b9e^1 too; the late copy's
    `_copy_events` does the same)."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.BUSY, {}, now, now)
    run = RunRecord(
        "r1", "t", "g", RunStatus.RUNNING, user_id="u", created_at=now, lease_owner="exec-a"
    )

    def event(seq: int, by: str) -> EventRecord:
        return EventRecord("r1", "t", seq, "status", {"by": by}, now)

    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await _fallback_with(fallback, thread, [run])
        await fallback.registry.store_events([event(1, "exec-a")])
        copied: dict[str, int] = {}
        copy = CopyThread("t", copied)
        await copy.unfinished().replay(primary, fallback)
        await primary.registry.store_events([event(2, "exec-b"), event(3, "exec-b")])
        await primary.registry.put_run(
            replace(run, status=RunStatus.SUCCESS, lease_owner=None, finished_at=now)
        )
        await fallback.registry.store_events([event(s, "exec-a") for s in (2, 3, 4)])
        await copy.unfinished().replay(primary, fallback)
        by = [(e.seq, e.payload["by"]) for e in await primary.registry.list_events("r1")]
        assert by == [(1, "exec-a"), (2, "exec-b"), (3, "exec-b")]
