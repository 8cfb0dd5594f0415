"""The late end of a row no copy marked (an earlier version's copy of a run released in
the fallback) compares the lease null-safe. A row another executor claimed and
released since looks the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.persistence.backends import Backend
from code_hero.persistence.entries import CopyThread
from code_hero.persistence.records import RunStatus
from tests.persistence.test_copy_mark import (
    NOW,
    RELEASED,
    RUN,
    _backends,
    _copied_before_the_upgrade,
    _deliveries,
    _event,
    _seqs,
    primary_config,
)

__all__ = ["primary_config"]


@asynccontextmanager
async def _claimed_and_released_there(
    primary_config: CheckpointerConfig,
) -> AsyncIterator[tuple[Backend, Backend]]:
    """An earlier version copied r1 released (no mark, no lease). exec-b then claimed
    r1 on the primary, wrote its event 1 and released it (a graceful stop): the row is
    (PENDING, no lease) again, and an unmarked row's claim leaves no mark. exec-a ran r1
    to its end in the fallback; the file is then copied late."""
    await _copied_before_the_upgrade(primary_config, RELEASED)
    async with _backends(primary_config) as (fallback, primary):
        claimed = await primary.registry.claim_runs(
            "exec-b", now=NOW, until=NOW + timedelta(minutes=5), limit=1
        )
        assert [r.run_id for r in claimed] == ["r1"]
        await primary.registry.store_events([_event(1, "exec-b")])
        await primary.registry.release_runs("exec-b", ["r1"])
        await fallback.registry.put_run(
            replace(RUN, status=RunStatus.SUCCESS, lease_owner=None, finished_at=NOW)
        )
        await fallback.registry.store_events([_event(s, "exec-a") for s in (1, 2)])
        await CopyThread("t", {}).late().replay(primary, fallback)
        yield fallback, primary


@pytest.mark.xfail(
    reason="open (low): a row an earlier version copied carries no mark, and a claim "
    "and release there by another executor leave it as that copy left it (PENDING, no "
    "lease); the null-safe late end (77bcc6d) takes it for the copy's own",
    strict=True,
)
async def test_an_unmarked_run_claimed_and_released_there_is_not_ended_late(
    primary_config: CheckpointerConfig,
) -> None:
    """The late copy's null-safe compare (77bcc6d) takes the released row for the copy's
    own: it writes exec-a's end over exec-b's run and announces it (before it, the
    unmarked row's `lease_owner = NULL` held for no row: left PENDING)."""
    async with _claimed_and_released_there(primary_config) as (_, primary):
        there = await primary.registry.get_run("r1")
        assert there is not None
        assert (there.status, there.lease_owner) == (RunStatus.PENDING, None)
        assert await _deliveries(primary) == 0


@pytest.mark.xfail(
    reason="open (low, older than the copy's mark): an unmarked row takes the late "
    "copy's events whoever holds or held it there",
    strict=True,
)
async def test_an_unmarked_run_claimed_and_released_there_takes_no_late_events(
    primary_config: CheckpointerConfig,
) -> None:
    """Pre-existing (a55ced9 too): an unmarked row takes the late copy's events, so
    exec-a's event 2 goes into exec-b's log after exec-b's 1."""
    async with _claimed_and_released_there(primary_config) as (_, primary):
        assert await _seqs(primary) == [(1, "exec-b")]


@pytest.mark.xfail(
    reason="open (a trade-off of d97245d): any claim by another executor takes a copied "
    "run over for good, a claim handed back untouched at shutdown too; the copy then "
    "leaves its end and the run is run again (no log mixed, no end lost for good)",
    strict=True,
)
@pytest.mark.parametrize("late", [False, True])
async def test_a_released_copy_handed_back_untouched_there_is_still_ended(
    primary_config: CheckpointerConfig, late: bool
) -> None:
    """Trade-off of d97245d (not a clear defect): r1 was copied released (mark PENDING,
    no lease), exec-a then ran it to its end in the fallback. exec-b claimed it on the
    primary as its shutdown began and handed it back at once (`ClaimLoop._hand_back`),
    writing nothing: row and log are as the copy left them, yet the claim marked the
    run TAKEN_OVER, so the copy leaves exec-a's end and the run is run again."""
    async with _backends(primary_config) as (fallback, primary):
        await fallback.registry.put_run(replace(RUN, status=RunStatus.PENDING, lease_owner=None))
        copy = CopyThread("t", {})
        await copy.unfinished().replay(primary, fallback)
        claimed = await primary.registry.claim_runs(
            "exec-b", now=NOW, until=NOW + timedelta(minutes=5), limit=1
        )
        assert [r.run_id for r in claimed] == ["r1"]
        await primary.registry.release_runs("exec-b", ["r1"])
        await fallback.registry.put_run(
            replace(RUN, status=RunStatus.SUCCESS, lease_owner=None, finished_at=NOW)
        )
        await fallback.registry.store_events([_event(s, "exec-a") for s in (1, 2)])
        await (copy.late() if late else copy).replay(primary, fallback)
        there = await primary.registry.get_run("r1")
        assert there is not None
        assert there.status == RunStatus.SUCCESS
        assert await _seqs(primary) == [(1, "exec-a"), (2, "exec-a")]
        assert await _deliveries(primary) == 1
