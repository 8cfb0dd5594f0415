"""A thread deleted and made anew under its id within one outage is copied back: a tombstone
of an older incarnation drops nothing of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from code_hero.config import CheckpointerConfig, create_memory_checkpointer
from code_hero.persistence.backends import open_backend
from code_hero.persistence.entries import CopyThread, DeleteThread
from code_hero.persistence.journal import Journal
from code_hero.persistence.records import ThreadRecord, ThreadStatus
from code_hero.persistence.tombstones import judge_for
from tests.conftest import make_config
from tests.persistence.test_tombstone_races import _drain, _new_checkpoint
from tests.persistence.test_tombstones import RUN, _born_in_an_outage


@pytest.fixture(params=["sqlite", "postgres"])
def primary_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    return make_config(request.param, request)


async def test_a_thread_deleted_and_made_anew_in_one_outage_is_copied_back(
    primary_config: CheckpointerConfig,
) -> None:
    """Thread t lived on the primary (created c0). Replica B lost the primary at s; its
    client deleted t there (DeleteThread journalled) and then made t anew under the same
    id (created c1 > s): a legitimate new thread, with a run and a checkpoint. At the
    copy-back, the DeleteThread replays first and leaves a tombstone of the OLD row with
    deleted_at = now (replay time) >= c1: put_thread refuses the new t's copy, the judge
    drops it, and its checkpoint is purged. Before tombfix (created_at equality) it was
    kept."""
    c0 = datetime.now(UTC) - timedelta(hours=1)
    since = datetime.now(UTC) - timedelta(minutes=10)
    c1 = datetime.now(UTC) - timedelta(minutes=5)
    async with (
        open_backend(create_memory_checkpointer()) as fallback,
        open_backend(primary_config) as primary,
    ):
        await primary.registry.put_thread(
            ThreadRecord("t", "u", ThreadStatus.IDLE, {"from": "before"}, c0, c0)
        )
        await _born_in_an_outage(fallback, "t", c1)
        journal = Journal(limit=10)
        for entry in (DeleteThread("t"), CopyThread("t", {}), _new_checkpoint("t")):
            journal.append(entry)
        await _drain(journal, primary, fallback, judge_for(primary, fallback, since))
        there = await primary.registry.get_thread("t", expired=True)
        assert there is not None, "the thread made anew in the outage was dropped"
        assert there.created_at == c1
        assert await primary.registry.get_run(RUN) is not None
        assert await primary.count_checkpoints("t") >= 1
