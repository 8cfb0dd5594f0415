"""Review of the one-transaction copy-back of a thread born in an outage (syncback2,
867ca15): `Registry.copy_thread` and `CopyThread._on_time`."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from code_hero.config import (
    CheckpointerConfig,
    create_memory_checkpointer,
    create_postgres_checkpointer,
)
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.entries import CopyThread
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from code_hero.persistence.unreachable import is_backend_error
from tests.conftest import make_config


async def _fallback_with(fallback: Backend, thread: ThreadRecord, runs: list[RunRecord]) -> None:
    await fallback.registry.put_thread(thread)
    for run in runs:
        await fallback.registry.put_run(run)


@pytest.mark.postgres
async def test_a_thread_with_many_runs_ended_in_the_outage_is_copied(pg_database: str) -> None:
    """A thread whose outage ended 5,100 runs: the copy's deliveries of their ends went
    as one statement of 13 parameters a run (`_enqueue_run_ends`), past PostgreSQL's
    65,535 (libpq refuses it before sending, an OperationalError without a SQLSTATE:
    `is_backend_error` calls it an outage, so the drain stops on it at every recovery
    and the sync-back never ends). Before the merge each end was a statement of its own."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now)
    runs = [
        RunRecord(
            f"r{n:05}", "t", "g", RunStatus.SUCCESS, user_id="u",
            created_at=now + timedelta(milliseconds=n), finished_at=now,
        )
        for n in range(5100)
    ]  # fmt: skip
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(create_postgres_checkpointer(pg_database)) as primary,
    ):
        await _fallback_with(fallback, thread, runs)
        try:
            await CopyThread("t", {}).replay(primary, fallback)
        except Exception as exc:
            pytest.fail(f"copy failed; taken for an outage: {is_backend_error(exc)}: {exc!r}")
        stored = await primary.registry.get_runs([r.run_id for r in runs])
        assert len(stored) == len(runs)


async def test_an_on_time_copy_never_takes_an_end_back(
    primary_config_pg: CheckpointerConfig,
) -> None:
    """`Registry.copy_thread` promises: a run the registry has finished keeps its end.
    A run in flight in the fallback (the copy) that another replica ended in the
    primary meanwhile (its lease lapsed during the drain, taken over and finished) is
    put back RUNNING under this replica's lease (the unfinished run's upsert has no
    guard; `put_run` had none either: not a regression of the merge)."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.BUSY, {}, now, now)
    run = RunRecord(
        "r1", "t", "g", RunStatus.RUNNING, user_id="u", created_at=now, lease_owner="exec-a"
    )
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config_pg) as primary,
    ):
        await _fallback_with(fallback, thread, [run])
        copied: dict[str, int] = {}
        await CopyThread("t", copied).unfinished().replay(primary, fallback)
        # Another replica's executor took it over and ended it.
        await primary.registry.put_run(
            replace(run, status=RunStatus.SUCCESS, lease_owner=None, finished_at=now)
        )
        await CopyThread("t", copied).replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert there.status is RunStatus.SUCCESS


async def test_an_on_time_copy_keeps_a_cancel_requested_there(
    primary_config_pg: CheckpointerConfig,
) -> None:
    """A cancel requested on the primary (another replica) between the copy's two
    passes is reset by the second (`cancel_requested` copied as the fallback has it):
    the cancel is lost. Pre-existing (`put_run`'s plain upsert), kept by the merge."""
    now = datetime.now(UTC)
    thread = ThreadRecord("t", "u", ThreadStatus.BUSY, {}, now, now)
    run = RunRecord(
        "r1", "t", "g", RunStatus.RUNNING, user_id="u", created_at=now, lease_owner="exec-a"
    )
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config_pg) as primary,
    ):
        await _fallback_with(fallback, thread, [run])
        copied: dict[str, int] = {}
        await CopyThread("t", copied).unfinished().replay(primary, fallback)
        assert await primary.registry.request_cancel("r1") is not None
        await CopyThread("t", copied).replay(primary, fallback)
        there = (await primary.registry.get_runs(["r1"]))["r1"]
        assert there.cancel_requested


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def primary_config_pg(request: pytest.FixtureRequest) -> CheckpointerConfig:
    return make_config(request.param, request)
