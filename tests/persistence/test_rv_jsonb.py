"""Review of a1500a6 (group commit: a checkpoint's jsonb dumped when its write is
serialised, `bulk.dumped_jsonb`): defects found, each test failing on a1500a6."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest
from psycopg.types.json import Jsonb

from code_hero.persistence import bulk
from code_hero.persistence.entries import PutCheckpoint
from code_hero.persistence.groupcommit import GroupCommitSaverPool
from tests.persistence.test_groupcommit import THREADS, call, grouped, threads_entries, with_text

pytestmark = pytest.mark.postgres

__all__ = ["grouped"]  # a fixture, used by name


@pytest.mark.parametrize(
    "text",
    ["x" * (1 << 20), "漢" * (1 << 18)],  # the CJK's JSON: 6 bytes a character (\uXXXX)
    ids=["ascii", "cjk"],
)
async def test_a_group_of_big_text_values_takes_no_more_memory_than_dumped_at_the_write(
    grouped: GroupCommitSaverPool, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """A group of 12 checkpoints with a big inline text each: the Python memory its
    write takes at its peak, with the jsonb dumped when the write is serialised (as now)
    and with psycopg dumping `Jsonb(value)` at the write (as before, and as the stock
    saver does), side by side. Pre-dumped as JSON bytes, each value was held from `_plan`
    to the end of `_commit`, and at the write psycopg's binary jsonb dumper made a second
    copy (`b"\\x01" + bytes`) and the array dumper a third (the joined jsonb[]): ~2.75x the
    group's JSON at the peak, against ~1.85x (1 MB of "x": 23 -> 35 MB; 138 -> 208 MB for
    a CJK text). Held once in the form it is sent in (`pgjsonb.DumpedJsonb`), it is the
    joined array's one copy more, as psycopg's own elements were."""
    peaks: dict[str, int] = {}
    for mode in ("after", "before"):
        by_thread = await threads_entries(THREADS)
        big = []
        for i, entries in enumerate(by_thread.values()):
            entry = with_text(next(e for e in entries if isinstance(e, PutCheckpoint)), text)
            config = {"configurable": {**entry.config["configurable"], "thread_id": f"{mode}{i}"}}
            big.append(PutCheckpoint(config, entry.checkpoint, entry.metadata, entry.versions))  # type: ignore[arg-type]
        before = grouped.transactions
        with monkeypatch.context() as patch:
            if mode == "before":
                patch.setattr(bulk, "dumped_jsonb", Jsonb)
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                await asyncio.gather(*(call(grouped, e) for e in big))
                peaks[mode] = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
        assert grouped.transactions - before == 2  # alone, then a group
    assert peaks["after"] <= peaks["before"] * 1.1, peaks
