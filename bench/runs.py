"""Run executor overhead and event-log throughput, side by side in one run.

    python bench/runs.py [--seconds 4] [--rounds 5] [--python-gc]

1. Runs per second of a small 4-node graph with 16 runs in flight on
   PostgreSQL: through the executor (registry rows, leases, the event log of
   every stream part) against calling `graph.ainvoke` directly with the same
   checkpointer and the same durability ("sync"), in alternating rounds, after a
   second of each unmeasured (connections opened, statements prepared). The process
   runs the garbage collector as `code-hero serve` does (`tune_collector`), for both
   sides alike; `--python-gc` keeps Python's defaults instead.
2. Events per second through the event log into PostgreSQL (numbered,
   published, stored in batches), 50,000 events.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, scratch_database, target, throughput

from code_hero.cli.serve import tune_collector
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence import clock
from code_hero.persistence.records import RunRecord, RunStatus
from code_hero.runs.events import EventType
from code_hero.runs.executor import StartRun

WORKERS = 16
GRAPH_FILE = Path(__file__).resolve().with_name("chain.py")


async def executor_vs_direct(seconds: float, rounds: int, python_gc: bool) -> list[str]:
    async with scratch_database() as url:
        settings = GatewaySettings(
            checkpointer=create_postgres_checkpointer(url, pool_max_size=WORKERS),
            graphs={"small": f"{GRAPH_FILE}:small_graph"},
            max_concurrent_runs=WORKERS,
        )
        async with Gateway(settings) as gw:
            graph = gw.graph_registry.get("small")

            async def through_executor(worker: int, i: int) -> None:
                run = await gw.start_run(StartRun(graph="small", input={"steps": []}, wait=True))
                if run.status is not RunStatus.SUCCESS:
                    raise RuntimeError(run.error)

            async def direct(worker: int, i: int) -> None:
                config = {"configurable": {"thread_id": f"d-{worker}-{i}-{time.monotonic_ns()}"}}
                await graph.ainvoke({"steps": []}, config, durability="sync")

            async def measured(run_once: Any) -> tuple[float, int, float]:
                """Runs/s, failures, and this process's CPU ms per run (both sides run
                in this one process: CPU per run tells a loaded machine apart)."""
                cpu, wall = time.process_time(), time.perf_counter()
                rps, fail = await throughput(run_once, workers=WORKERS, seconds=seconds)
                runs = rps * (time.perf_counter() - wall)
                return rps, fail, (time.process_time() - cpu) * 1000 / max(runs, 1)

            if not python_gc:  # the graphs loaded and the pool open, as once serving
                tune_collector()
            for warm_up in (through_executor, direct):
                await throughput(warm_up, workers=WORKERS, seconds=1.0)
            ex, di, ex_cpu, di_cpu, failures = [], [], [], [], 0
            for _ in range(rounds):
                rps, fail, cpu = await measured(through_executor)
                ex.append(rps)
                ex_cpu.append(cpu)
                failures += fail
                rps, fail, cpu = await measured(direct)
                di.append(rps)
                di_cpu.append(cpu)
                failures += fail
    e, d = median(ex), median(di)
    ec, dc = median(ex_cpu), median(di_cpu)
    collector = "Python's default collector" if python_gc else "the collector as served"
    print(
        f"postgres, {WORKERS} runs in flight, 4-node graph, durability sync, {rounds} rounds, "
        f"{collector}"
    )
    print(f"  executor + event log:      {e:8.1f} runs/s  {[round(x, 1) for x in ex]}")
    print(f"  graph.ainvoke, same saver: {d:8.1f} runs/s  {[round(x, 1) for x in di]}")
    print(f"  executor at {e / d:.0%} of direct, failures {failures}")
    print(
        f"  this process's CPU per run: executor {ec:.2f} ms, direct {dc:.2f} ms "
        f"(direct / executor {dc / ec:.0%}: the ratio a CPU-bound process would reach)"
    )
    return [target("executor_vs_direct", e / d * 100, ">= 70%", e / d >= 0.7, "%")]


async def event_log_throughput(total: int = 50_000) -> list[str]:
    async with scratch_database() as url:
        settings = GatewaySettings(checkpointer=create_postgres_checkpointer(url))
        async with Gateway(settings) as gw:
            registry = gw.manager.registry
            await registry.admit_run(
                RunRecord(
                    run_id="bench-run", thread_id="bench", graph="g", status=RunStatus.PENDING
                ),
                reject_if_busy=True,
            )
            # Started as the executor starts a run: its events published past its
            # reservation (seq_reserved) wait for their batch, as a real run's do.
            started, last = await registry.start_run("bench-run", clock.now())
            writer = await gw.events.writer("bench-run", "bench", last=last, started=started)
            payload: dict[str, Any] = {
                "node": "expert",
                "namespace": "",
                "message_id": "m",
                "delta": "token ",
            }
            start = time.perf_counter()
            for i in range(total):
                writer.emit(EventType.MESSAGE_DELTA, payload)
                if i % 1000 == 999:
                    await asyncio.sleep(0)  # a run yields between tokens; flushes run meanwhile
            await writer.close()
            elapsed = time.perf_counter() - start
            stored = await registry.last_seq("bench-run")
    rate = total / elapsed
    print(
        f"event log into postgres: {total} events stored in {elapsed:.2f}s = {rate:,.0f} events/s"
    )
    assert stored == total
    return [target("event_log_events_per_second", rate, ">= 20000/s", rate >= 20_000, "/s")]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--python-gc", action="store_true", help="keep Python's collector settings, not serve's"
    )
    args = parser.parse_args()
    lines = await executor_vs_direct(args.seconds, args.rounds, args.python_gc)
    lines += await event_log_throughput()
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
