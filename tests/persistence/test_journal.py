"""The journal's drain: threads side by side, each thread in order, nothing popped unreplayed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from code_hero.persistence.journal import Journal


class Down(Exception):
    """Stands for an unreachable primary."""


@dataclass(frozen=True)
class Fake:
    thread_id: str
    n: int
    log: list[tuple[str, int]]
    fail: type[Exception] | None = None
    key = None

    async def replay(self, primary: Any, fallback: Any) -> None:
        await asyncio.sleep(0.001 * (self.n % 3))  # lanes finish out of order
        if self.fail is not None:
            raise self.fail(f"{self.thread_id}/{self.n}")
        self.log.append((self.thread_id, self.n))


async def drain(journal: Journal, synced: list[int]) -> None:
    await journal.drain(
        primary=None,  # type: ignore[arg-type]
        fallback=None,  # type: ignore[arg-type]
        concurrency=4,
        is_unreachable=lambda exc: isinstance(exc, Down),
        on_synced=lambda: synced.append(1),
    )


async def test_each_thread_replays_in_order_and_refusals_are_quarantined() -> None:
    log: list[tuple[str, int]] = []
    journal = Journal(1000)
    for n in range(60):
        fail = ValueError if n == 7 else None
        journal.append(Fake(f"t{n % 5}", n, log, fail))  # type: ignore[arg-type]
    synced: list[int] = []
    await drain(journal, synced)
    assert len(journal) == 0 and len(synced) == 59
    assert [q.entry.n for q in journal.quarantine] == [7]  # type: ignore[attr-defined]
    for t in range(5):
        mine = [n for thread, n in log if thread == f"t{t}"]
        assert mine == sorted(mine) and len(mine) == 12 - (t == 2)


async def test_an_unreachable_primary_pops_only_the_replayed_prefix() -> None:
    log: list[tuple[str, int]] = []
    journal = Journal(1000)
    for n in range(8):
        journal.append(Fake(f"t{n % 2}", n, log, Down if n == 3 else None))  # type: ignore[arg-type]
    synced: list[int] = []
    with pytest.raises(Down):
        await drain(journal, synced)
    # 0, 1, 2 replayed and popped; 3 failed; everything from 3 on stays (replay is idempotent).
    assert [e.n for e in journal.entries] == [3, 4, 5, 6, 7]  # type: ignore[attr-defined]
    assert len(synced) == 3 and not journal.quarantine
    assert (("t1", 5) not in log) and (("t1", 7) not in log)  # t1 stopped at 3
