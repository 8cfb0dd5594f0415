"""Degraded mode: runs through a PostgreSQL outage, and the sync back afterwards.

    python bench/outage.py [--runs 320] [--rounds 3] [--durable] [--payload BYTES]
                           [--only-degraded | --only-sync-back]

With `--durable` the fallback is the durable one `code-hero serve` uses on
PostgreSQL (a SQLite file and its journal, in a temporary folder), not memory.
`--payload` puts a value of that many bytes in each run's state, so each of its
checkpoints (and journal entries) carries it; `--only-degraded` stops after 1,
`--only-sync-back` runs 2 and 3 only.

PostgreSQL sits behind the test suite's `BlackHoleProxy`: `refuse()` takes it
down for this process only, `forward()` brings it back; the server itself
keeps running.

1. Runs per second of a small 4-node graph with 16 runs in flight
   (`startRun` with wait, each on a new thread) while PostgreSQL serves and
   while the in-memory fallback serves, in alternating rounds in one process:
   the median of degraded / healthy; and the event loop's gaps meanwhile (how
   late a 1 ms tick wakes: what every request waits behind a step on the loop,
   such as a commit of the journal's file), p50 and p99 of each mode.
2. The sync-back rate: with at least 2,000 checkpoints journalled during an
   outage, the time from the start of `FallbackRouter.recover()` to nothing
   pending; the target counts checkpoints (PutCheckpoint entries) per second.
3. The recovery time: with 1,000 checkpoints journalled, from PostgreSQL
   answering again (`forward()`) to the gateway healthy with nothing pending,
   as the health loop finds it (probe every 0.2 s: includes up to one interval).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.faults

from _common import ADMIN_URL, median, scratch_database, target
from tests.faults import BlackHoleProxy, with_port

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.journal import PutCheckpoint
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun

ROOT = Path(__file__).resolve().parent.parent
# The durable fallback's folder (`--durable`); None: the fallback is in memory.
FALLBACK_DIR: Path | None = None
WORKERS = 16
PROBE_INTERVAL = 0.2
GRAPH = f"{ROOT / 'bench' / 'chain.py'}:small_graph"
PG_PORT = urlsplit(ADMIN_URL).port or 5432
PAYLOAD = 0  # bytes of state each run carries (`--payload`)


@asynccontextmanager
async def proxied_gateway(
    url: str, probe_interval: float
) -> AsyncIterator[tuple[Gateway, BlackHoleProxy]]:
    """A gateway whose PostgreSQL goes through a proxy the bench cuts and restores."""
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        durable = None if FALLBACK_DIR is None else str(FALLBACK_DIR / "fallback.sqlite")
        config = create_postgres_checkpointer(
            with_port(url, proxy.port),
            pool_max_size=WORKERS,
            pool_timeout=1,
            health_check_interval=probe_interval,
            fallback_path=durable,
        )
        settings = GatewaySettings(
            checkpointer=config, graphs={"small": GRAPH}, max_concurrent_runs=WORKERS
        )
        async with Gateway(settings) as gw:
            yield gw, proxy


async def until(condition: Callable[[], bool], limit: float = 60.0, step: float = 0.005) -> None:
    """Poll `condition()` until true."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(step)


def degraded(gw: Gateway) -> bool:
    return gw.manager.overall_status == "degraded"


def synced(gw: Gateway) -> bool:
    return gw.manager.overall_status == "healthy" and gw.manager.pending_sync == 0


def journal_kinds(gw: Gateway) -> Counter[str]:
    return Counter(type(e).__name__ for e in gw.manager.router.journal.entries)


def journalled_checkpoints(gw: Gateway) -> int:
    return sum(isinstance(e, PutCheckpoint) for e in gw.manager.router.journal.entries)


async def one_run(gw: Gateway) -> None:
    steps = ["x" * PAYLOAD] if PAYLOAD else []
    run = await gw.start_run(StartRun(graph="small", input={"steps": steps}, wait=True))
    if run.status is not RunStatus.SUCCESS:
        raise RuntimeError(run.error)


async def fixed_runs(gw: Gateway, total: int) -> tuple[float, int]:
    """`total` runs on new threads, WORKERS at a time: runs per second and failures."""
    left = total
    failures = 0

    async def worker() -> None:
        nonlocal left, failures
        while left > 0:
            left -= 1
            try:
                await one_run(gw)
            except Exception:
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return total / (time.perf_counter() - start), failures


async def runs_until(gw: Gateway, checkpoints: int) -> int:
    """Runs on new threads, WORKERS at a time, until the journal holds `checkpoints`."""
    done = 0

    async def worker() -> None:
        nonlocal done
        while journalled_checkpoints(gw) < checkpoints:
            await one_run(gw)
            done += 1

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return done


async def go_down(gw: Gateway, proxy: BlackHoleProxy) -> None:
    proxy.refuse()
    # A probe now rather than at the next interval (each probe is bounded by pool_timeout).
    await gw.manager.health_check()
    await until(lambda: degraded(gw))


@asynccontextmanager
async def loop_gaps(into: list[float]) -> AsyncIterator[None]:
    """How late a 1 ms tick of the event loop wakes, each time, while the body runs."""
    done = asyncio.Event()

    async def tick() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            into.append(max(0.0, time.perf_counter() - start - 0.001))

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        done.set()
        await task


def _gaps(gaps: list[float]) -> str:
    ordered = sorted(gaps) or [0.0]
    p50, p99 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.99))
    worst = ordered[-1] * 1000
    return f"loop gaps p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {worst:.1f}"


async def degraded_vs_healthy(url: str, runs: int, rounds: int) -> list[str]:
    healthy, down, failures, waits = [], [], 0, []
    healthy_gaps: list[float] = []
    down_gaps: list[float] = []
    async with proxied_gateway(url, PROBE_INTERVAL) as (gw, proxy):
        await fixed_runs(gw, WORKERS * 2)  # warm-up: graph compiled, pool filled
        for _ in range(rounds):
            async with loop_gaps(healthy_gaps):
                rps, fail = await fixed_runs(gw, runs)
            healthy.append(rps)
            failures += fail
            await go_down(gw, proxy)
            async with loop_gaps(down_gaps):
                rps, fail = await fixed_runs(gw, runs)
            down.append(rps)
            failures += fail
            pending = gw.manager.pending_sync
            proxy.forward()
            start = time.perf_counter()
            await until(lambda: synced(gw))
            waits.append((pending, time.perf_counter() - start))
    ratios = [d / h for d, h in zip(down, healthy, strict=True)]
    ratio = median(ratios)
    print(f"{WORKERS} runs in flight, 4-node graph, {runs} runs per round, {rounds} rounds A/B")
    print(f"  healthy (PostgreSQL):  {median(healthy):8.1f} runs/s  {[round(x) for x in healthy]}")
    where = "in memory" if FALLBACK_DIR is None else "durable"
    print(f"  degraded ({where}):  {median(down):8.1f} runs/s  {[round(x) for x in down]}")
    print(f"  degraded / healthy per round {[round(r, 2) for r in ratios]}, failures {failures}")
    print(f"  healthy:  {_gaps(healthy_gaps)}")
    print(f"  degraded: {_gaps(down_gaps)}")
    for pending, seconds in waits:
        print(f"  after a round: {pending} journal entries synced back in {seconds:.2f}s")
    return [target("degraded_runs_ratio", ratio, ">= 0.8", ratio >= 0.8)]


async def sync_back_rate(url: str, checkpoints: int) -> list[str]:
    # The health loop stays out of the way (long interval): the bench probes and
    # recovers itself, so the clock starts exactly when the recovery does.
    async with proxied_gateway(url, 3600) as (gw, proxy):
        await fixed_runs(gw, WORKERS)
        await go_down(gw, proxy)
        runs = await runs_until(gw, checkpoints)
        kinds = journal_kinds(gw)
        entries, puts = sum(kinds.values()), kinds["PutCheckpoint"]
        router = gw.manager.router
        proxy.forward()
        start = time.perf_counter()
        for _ in range(6000):  # the pool reconnects at its own pace
            if await router.probe(router.primary):
                break
            await asyncio.sleep(0.01)
        probed = time.perf_counter()
        assert await router.recover()
        seconds = time.perf_counter() - probed
        assert router.pending_sync == 0 and router.quarantined == 0
        assert synced(gw)
    mix = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    print(f"sync back: {runs} runs on new threads during the outage journalled {entries} entries")
    print(f"  ({mix})")
    print(
        f"  first good probe after {probed - start:.2f}s, then recover() {seconds:.2f}s: "
        f"{entries / seconds:,.0f} entries/s, {puts / seconds:,.0f} checkpoints/s "
        "(the target counts checkpoints)"
    )
    rate = puts / seconds
    return [target("sync_back_rate", rate, ">= 2000", rate >= 2000, " checkpoints/s")]


async def recovery_time(url: str, checkpoints: int) -> list[str]:
    async with proxied_gateway(url, PROBE_INTERVAL) as (gw, proxy):
        await fixed_runs(gw, WORKERS)
        await go_down(gw, proxy)
        await runs_until(gw, checkpoints)
        entries, puts = gw.manager.pending_sync, journalled_checkpoints(gw)
        router = gw.manager.router
        proxy.forward()
        start = time.perf_counter()
        await until(lambda: router.primary.healthy, step=0.001)
        answered = time.perf_counter() - start
        await until(lambda: synced(gw), step=0.001)
        seconds = time.perf_counter() - start
    print(
        f"recovery: {puts} checkpoints ({entries} entries) journalled; forward() -> healthy "
        f"with nothing pending in {seconds:.2f}s (includes up to one {PROBE_INTERVAL}s probe "
        "interval)"
    )
    print(
        f"  of which {answered:.2f}s until a probe got through the pool, "
        f"{seconds - answered:.2f}s replaying"
    )
    return [target("recovery_time", seconds, "< 2 s", seconds < 2, " s")]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=320, help="runs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--durable", action="store_true", help="a durable fallback")
    parser.add_argument("--payload", type=int, default=0, help="bytes of state per run")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--only-degraded", action="store_true", help="the first part only")
    only.add_argument(
        "--only-sync-back", action="store_true", help="the sync back and the recovery only"
    )
    args = parser.parse_args()
    global FALLBACK_DIR, PAYLOAD
    PAYLOAD = args.payload
    if args.durable:
        FALLBACK_DIR = Path(tempfile.mkdtemp(prefix="bench-outage-"))
    # Each outage would log the pool's reconnection attempts and the switches.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    lines: list[str] = []
    if not args.only_sync_back:
        async with scratch_database("bench_outage") as url:
            lines += await degraded_vs_healthy(url, args.runs, args.rounds)
    if args.only_degraded:
        print(*lines, sep="\n")
        return
    async with scratch_database("bench_outage") as url:
        lines += await sync_back_rate(url, 2_000)
    async with scratch_database("bench_outage") as url:
        lines += await recovery_time(url, 1_000)
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
