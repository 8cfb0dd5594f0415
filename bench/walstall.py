"""The event loop's stalls while the durable fallback journals large checkpoints.

    python bench/walstall.py [--size 100000] [--rate 300] [--seconds 10]

During an outage every write is committed to the journal's file (`<path>.entries`)
on the event loop before it is acknowledged (`outagefile.py`). This appends
`--rate` checkpoint entries per second of `--size` bytes each through the journal
(`Journal.append`, the path a write takes) for `--seconds`, and measures:

- each append's time on the loop (its commit, and a checkpoint run inside it);
- the loop's gaps: how late a 1 ms tick wakes (what every other request waits);
- the entries per second reached, and the largest `-wal` file seen.

No PostgreSQL: the journal's file alone. Compare builds by running this with
PYTHONPATH on each tree's `src`, alternately, in one session.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from code_hero.persistence.entries import PutCheckpoint
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile


def _entry(n: int, payload: bytes) -> PutCheckpoint:
    checkpoint_id = f"{n:032d}"
    return PutCheckpoint(
        config={"configurable": {"thread_id": f"t{n % 64}", "checkpoint_ns": ""}},
        checkpoint={  # type: ignore[typeddict-item]
            "v": 4,
            "id": checkpoint_id,
            "ts": "2026-11-30T00:00:00+00:00",
            "channel_values": {"messages": payload + n.to_bytes(8, "big")},
            "channel_versions": {"messages": str(n)},
            "versions_seen": {},
        },
        metadata={"source": "loop", "step": n},  # type: ignore[typeddict-item]
        versions={"messages": str(n)},
    )


def _size(file: str) -> int:
    try:
        return os.stat(file).st_size
    except FileNotFoundError:
        return 0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def measure(folder: str, size: int, rate: int, seconds: float) -> dict[str, float]:
    path = os.path.join(folder, "fb.sqlite")
    store = OutageFile.claim(path, "postgresql://bench")
    journal = Journal(limit=10_000_000)
    journal.attach(store, {})
    payload = os.urandom(size)
    appends: list[float] = []
    gaps: list[float] = []
    wal = f"{path}.entries-wal"
    largest_wal = 0
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            gaps.append(max(0.0, time.perf_counter() - start - 0.001))

    async def writer() -> None:
        nonlocal largest_wal
        n = 0
        begin = time.perf_counter()
        while time.perf_counter() - begin < seconds:
            entry = _entry(n, payload)
            t0 = time.perf_counter()
            journal.append(entry)
            appends.append(time.perf_counter() - t0)
            n += 1
            if n % 50 == 0:
                largest_wal = max(largest_wal, _size(wal))
            due = begin + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        done.set()

    tick = asyncio.create_task(ticker())
    began = time.perf_counter()
    await writer()
    took = time.perf_counter() - began
    await tick
    store.close()
    return {
        "append_p50_ms": _pct(appends, 0.50),
        "append_p99_ms": _pct(appends, 0.99),
        "append_max_ms": max(appends) * 1000,
        "gap_p50_ms": _pct(gaps, 0.50),
        "gap_p99_ms": _pct(gaps, 0.99),
        "gap_max_ms": max(gaps) * 1000,
        "entries_per_s": len(appends) / took,
        "largest_wal_mb": largest_wal / 1e6,
        "gap_mean_ms": statistics.fmean(gaps) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000, help="bytes per entry")
    parser.add_argument("--rate", type=int, default=300, help="entries per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-walstall-") as folder:
        result = asyncio.run(measure(folder, args.size, args.rate, args.seconds))
    print(" ".join(f"{k}={v:.2f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
