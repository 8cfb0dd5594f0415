"""A thread's runs are stamped in the order they are admitted (under its row's lock):
a start stamped earlier (another replica's clock, or a start that reached the
database after a later one) is queued after the runs admitted before it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from code_hero.persistence.records import Registry
from tests.persistence.registry.support import run

T0 = datetime(2030, 1, 1, tzinfo=UTC)


async def test_a_run_stamped_before_the_thread_newest_is_stamped_after_it(
    registry: Registry,
) -> None:
    first, _ = await registry.admit_run(run("a", created_at=T0), reject_if_busy=False)
    assert first is not None and first.created_at == T0
    late, busy = await registry.admit_run(
        run("b", created_at=T0 - timedelta(seconds=5)), reject_if_busy=False
    )
    assert busy == "a"  # queued behind it, as admitted
    assert late is not None and late.created_at == T0 + timedelta(microseconds=1)
    stored = await registry.get_run("b")
    assert stored is not None and stored.created_at == late.created_at
    # The order the thread's queue and its listings go by is the admission's.
    runs = await registry.unfinished_runs("t1")
    assert [r.run_id for r in runs] == ["a", "b"]


async def test_a_run_stamped_after_the_newest_keeps_its_time(registry: Registry) -> None:
    await registry.admit_run(run("a", created_at=T0), reject_if_busy=False)
    later = T0 + timedelta(seconds=1)
    b, _ = await registry.admit_run(run("b", created_at=later), reject_if_busy=False)
    assert b is not None and b.created_at == later
    # Another thread's runs do not count.
    c, busy = await registry.admit_run(
        run("c", thread_id="t2", created_at=T0 - timedelta(days=1)), reject_if_busy=False
    )
    assert busy is None and c is not None and c.created_at == T0 - timedelta(days=1)
