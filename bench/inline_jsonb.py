"""Group commit with a checkpoint's jsonb dumped when its write is serialised ("after"),
against psycopg dumping it at the write ("before"), side by side in one run.

    python bench/inline_jsonb.py [--seconds 3] [--rounds 3]

1. The loop's CPU for a group of 16 small checkpoints (an inline text each): planning
   it (`_plan`) and dumping its one statement's parameters, as `_commit` does on the
   loop, in-process.
2. Graph runs per second, 16 concurrent threads of the 4-node chain (small checkpoints,
   an inline text each) through the manager (group commit), in alternating rounds.
3. The event loop's longest stall (a 1 ms ticker's worst lateness) while 12 threads
   each put a checkpoint with a 1 MB inline text at once, in alternating rounds.

Rounds alternate before and after, and which goes first: before, after, after, before.

"before" is this tree with `bulk.dumped_jsonb` swapped for psycopg's plain `Jsonb`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, scratch_database, throughput
from chain import small_graph
from langgraph.checkpoint.base import empty_checkpoint
from psycopg.adapt import PyFormat, Transformer
from psycopg.types.json import Jsonb

from code_hero.checkpointing import EnhancedCheckpointerManager, create_postgres_checkpointer
from code_hero.persistence import bulk, groupcommit
from code_hero.persistence.backends import PostgresBackend
from code_hero.persistence.entries import PutCheckpoint
from code_hero.persistence.groupcommit import GroupCommitSaverPool

WORKERS = 16
BIG_THREADS = 12
BIG = 1 << 20
MODES = ("before", "after")


def in_turn(round_: int) -> tuple[str, ...]:
    """The modes in round `round_`'s order: before first in even rounds, after in odd."""
    return MODES if round_ % 2 == 0 else MODES[::-1]


@contextmanager
def mode(name: str) -> Iterator[None]:
    """`before`: the jsonb left for psycopg to dump at the write, as the code was."""
    dumped = bulk.dumped_jsonb
    if name == "before":
        bulk.dumped_jsonb = Jsonb  # type: ignore[assignment]
    try:
        yield
    finally:
        bulk.dumped_jsonb = dumped  # type: ignore[assignment]


def checkpoint(thread_id: str, n: int, text: str) -> PutCheckpoint:
    """A checkpoint like the chain's: an inline text and a list (a blob)."""
    version = f"{n + 1:032d}.0.5"
    cp = empty_checkpoint()
    cp["id"] = f"{n:032d}"
    cp["channel_values"] = {"text": text, "steps": [f"n{i}" for i in range(n % 4 + 1)]}
    cp["channel_versions"] = {"text": version, "steps": version}
    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    metadata: Any = {"source": "loop", "step": n, "parents": {}}
    return PutCheckpoint(config, cp, metadata, {"text": version, "steps": version})


def loop_cpu_per_group(saver: Any, rounds: int) -> dict[str, float]:
    """Microseconds to plan a group of 16 small checkpoints and dump its parameters: the
    fastest of `rounds` x 5 alternating tries of 100 groups (the least disturbed by the
    machine's other work)."""
    items: list[Any] = [checkpoint(f"t{i}", i, f"n{i % 4} done") for i in range(16)]
    transformer = Transformer()

    def group() -> None:
        planned = groupcommit._plan(saver, items, budget=groupcommit.INLINE_BYTES)
        one = bulk.as_one_statement(saver, groupcommit._merged(saver, planned))  # type: ignore[arg-type]
        assert one is not None
        transformer.dump_sequence(one[1], [PyFormat.BINARY] * len(one[1]))

    took: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(rounds * 5):
        for name in in_turn(r):
            with mode(name):
                start = time.perf_counter()
                for _ in range(100):
                    group()
                took[name].append((time.perf_counter() - start) / 100 * 1e6)
    return {name: min(values) for name, values in took.items()}


async def graph_rps(url: str, seconds: float, rounds: int) -> dict[str, float]:
    config = create_postgres_checkpointer(url, pool_max_size=WORKERS, saver_instances=WORKERS)
    rps: dict[str, list[float]] = {m: [] for m in MODES}
    async with EnhancedCheckpointerManager(config) as manager:
        graph = small_graph().compile(checkpointer=manager.get_checkpointer())
        for r in range(rounds):
            for name in in_turn(r):

                async def once(worker: int, i: int, label: str = f"{name}{r}") -> None:
                    thread = f"{label}-{worker}-{i}-{time.monotonic_ns()}"
                    await graph.ainvoke({"steps": []}, {"configurable": {"thread_id": thread}})

                with mode(name):
                    got, failures = await throughput(once, workers=WORKERS, seconds=seconds)
                assert not failures
                rps[name].append(got)
    return {name: median(values) for name, values in rps.items()}


async def worst_lateness(done: asyncio.Event) -> float:
    """The longest a 1 ms sleep overslept until `done`: the loop's worst stall, in s."""
    worst = 0.0
    while not done.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - start - 0.001)
    return worst


async def big_stall(url: str, rounds: int) -> dict[str, tuple[float, float]]:
    """The loop's worst stall and the wall time, in ms, for 12 x 1 MB inline texts."""
    backend = PostgresBackend(create_postgres_checkpointer(url))
    await backend.open()
    saver = backend.saver
    assert isinstance(saver, GroupCommitSaverPool)
    stalls: dict[str, list[float]] = {m: [] for m in MODES}
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    try:
        for r in range(rounds):
            for name in in_turn(r):
                items = [checkpoint(f"{name}{r}-{i}", r, "x" * BIG) for i in range(BIG_THREADS)]
                done = asyncio.Event()
                with mode(name):
                    ticker = asyncio.create_task(worst_lateness(done))
                    await asyncio.sleep(0.01)
                    start = time.perf_counter()
                    await asyncio.gather(
                        *(saver.aput(e.config, e.checkpoint, e.metadata, e.versions) for e in items)
                    )
                    walls[name].append((time.perf_counter() - start) * 1e3)
                    done.set()
                    stalls[name].append(await ticker * 1e3)
    finally:
        await backend.close()
    return {name: (median(stalls[name]), median(walls[name])) for name in MODES}


async def main(seconds: float, rounds: int) -> None:
    async with scratch_database() as url:
        backend = PostgresBackend(create_postgres_checkpointer(url))
        await backend.open()
        saver = backend.saver
        assert isinstance(saver, GroupCommitSaverPool)
        cpu = loop_cpu_per_group(saver._stock, max(rounds, 5))
        await backend.close()
        print("loop CPU, plan + dump a group of 16 small checkpoints (us, fastest):")
        for name in MODES:
            print(f"  {name:6} {cpu[name]:8.1f}")
        print(f"  after/before {cpu['after'] / cpu['before']:.3f}")
        rps = await graph_rps(url, seconds, rounds)
        print(f"graph runs/s, {WORKERS} concurrent, group commit (median of {rounds}):")
        for name in MODES:
            print(f"  {name:6} {rps[name]:8.1f}")
        print(f"  after/before {rps['after'] / rps['before']:.3f}")
        stall = await big_stall(url, rounds)
        print(f"{BIG_THREADS} x 1 MB inline text at once (median of {rounds}):")
        for name in MODES:
            worst, wall = stall[name]
            print(f"  {name:6} worst loop stall {worst:6.1f} ms, all committed in {wall:6.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds))
