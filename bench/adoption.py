"""The event loop's gaps while a live server adopts a dead replica's fallback file.

    python bench/adoption.py [--writes 2000] [--size 10000] [--rounds 3]

A live manager serves from its own fallback file while its database is missing (a
database of the bench's own on the shared server, not made yet); a second one writes
`--writes` checkpoints of `--size` bytes on 50 threads on its file and goes away. The
database is made; the live one copies its own outage back, then adopts the other file
(`adoption.py`), copies it into the database, empties and releases it. Measured from
the database's making to the adopted file's release:

- the loop's gaps: how late a 1 ms tick wakes (what every request waits);
- the time the loop spent closing outage files (`OutageFile.close`: the last
  connection's close checkpoints the WAL), and on which thread it ran.

Compare builds by running this with PYTHONPATH on each tree's `src`, alternately, in
one session. Needs the PostgreSQL at 127.0.0.1:5432 (a database of its own, dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.config import create_postgres_checkpointer
from code_hero.persistence import outagefile
from code_hero.persistence.manager import EnhancedCheckpointerManager

SERVER = "postgresql://postgres@127.0.0.1:5432"
DB = "bench_adoption"


def _admin(sql: str) -> None:
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as conn:
        conn.execute(sql.encode())


def _manager(folder: Path) -> EnhancedCheckpointerManager:
    config = create_postgres_checkpointer(
        f"{SERVER}/{DB}",
        fallback_path=str(folder / "fb.sqlite"),
        health_check_interval=0.2,
        pool_timeout=1,
    )
    return EnhancedCheckpointerManager(config)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def measure(writes: int, size: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="bench-adoption-"))
    await asyncio.to_thread(_admin, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    live = _manager(folder)
    await live.initialize()  # fb.sqlite: the database is missing, an outage
    dead = _manager(folder)
    await dead.initialize()  # fb-2.sqlite
    saver = dead.get_checkpointer()
    blob = "y" * size
    for i in range(writes):
        config: Any = {"configurable": {"thread_id": f"t{i % 50}", "checkpoint_ns": ""}}
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"x": f"{blob}{i}"}
        checkpoint["channel_versions"] = {"x": str(i + 1)}
        await saver.aput(config, checkpoint, {"step": i}, {"x": str(i + 1)})
    await dead.cleanup()  # gone, its writes in its file

    loop_thread = threading.current_thread()
    closing: list[float] = []  # seconds the loop's thread spent closing an outage file
    close = outagefile.OutageFile.close

    def timed_close(store: outagefile.OutageFile) -> None:
        started = time.perf_counter()
        close(store)
        if threading.current_thread() is loop_thread:
            closing.append(time.perf_counter() - started)

    outagefile.OutageFile.close = timed_close  # type: ignore[method-assign]
    released = asyncio.Event()

    class Released(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "adopted fallback file" in record.getMessage() and "emptied" in record.getMessage():
                released.set()

    logger = logging.getLogger("code_hero.persistence.adoption")
    handler = Released()
    logger.addHandler(handler)
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        while not done:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            gaps.append(max(0.0, time.perf_counter() - start - 0.001))

    tick = asyncio.create_task(ticker())
    began = time.perf_counter()
    try:
        await asyncio.to_thread(_admin, f"CREATE DATABASE {DB}")
        await asyncio.wait_for(released.wait(), 120)
        took = time.perf_counter() - began
        done = True
        await tick
    finally:
        logger.removeHandler(handler)
        await live.cleanup()
        outagefile.OutageFile.close = close  # type: ignore[method-assign]
        await asyncio.to_thread(_admin, f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "seconds": took,
        "gap_p99_ms": _pct(gaps, 0.99),
        "gap_max_ms": max(gaps) * 1000,
        "closing_on_loop_ms": sum(closing) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000, help="checkpoints in the file")
    parser.add_argument("--size", type=int, default=10_000, help="bytes per checkpoint")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    adopting = logging.getLogger("code_hero.persistence.adoption")
    adopting.setLevel(logging.WARNING)
    adopting.propagate = False  # its two lines, read by the bench only
    logging.basicConfig(level=logging.CRITICAL)
    for _ in range(args.rounds):
        result = asyncio.run(measure(args.writes, args.size))
        print(" ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
