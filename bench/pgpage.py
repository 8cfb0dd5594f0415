"""A PostgreSQL page of threads read as tuples made records by position ("after")
against dict rows and `Dialect._thread` ("before"), side by side in one run.

    python bench/pgpage.py [--rounds 8] [--calls 2000] [--threads 1000]

Builds the app on a scratch PostgreSQL database as `code-hero serve` does (no network:
each request goes to the ASGI app directly, as `bench/reqcpu.py` does), fills
`--threads` threads, then runs `--calls` calls of each layer in rounds that alternate
before and after (and which goes first): the registry's `list_threads(first=10)` and
the whole GraphQL `threads(first: 10)` request of `bench/peer.py`. Per call: this
process's CPU (`getrusage`), the CPU of the database's server processes (from /proc:
PostgreSQL on this machine; 10 ms ticks, so keep `--calls` in the thousands) and the
wall time. Medians of the rounds.

"before" is this tree with `PostgresRegistry._threads_of` swapped for
`SqlRegistry._threads_of` (what every backend did: dict rows, psycopg's jsonb loader,
`Dialect._thread` a row); "after" is `PostgresRegistry._threads_of`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import scratch_database, target
from peer import THREADS
from reqcpu import CREATE, request

from code_hero.app import create_app
from code_hero.auth import ANONYMOUS
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.persistence.registry.postgres import PostgresRegistry
from code_hero.persistence.registry.sql import SqlRegistry
from code_hero.settings import AppSettings

WAYS = {"before": SqlRegistry._threads_of, "after": PostgresRegistry._threads_of}
TICK = os.sysconf("SC_CLK_TCK")


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu(pids: list[int]) -> float:
    """Seconds of CPU the server processes `pids` used so far (0 where unreadable)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


async def per_call(
    call: Callable[[], Awaitable[Any]], calls: int, pids: list[int]
) -> tuple[float, float, float]:
    """Microseconds per call: this process's CPU, the server's CPU, wall time."""
    for _ in range(20):
        await call()
    wall, mine, theirs = time.perf_counter(), cpu(), server_cpu(pids)
    for _ in range(calls):
        await call()
    scale = 1e6 / calls
    return (
        (cpu() - mine) * scale,
        (server_cpu(pids) - theirs) * scale,
        (time.perf_counter() - wall) * scale,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1000)
    args = parser.parse_args()
    async with scratch_database("ch_pgpage") as url:
        config = create_postgres_checkpointer(url)
        app = create_app(AppSettings(gateway=GatewaySettings(checkpointer=config)))
        async with app.router.lifespan_context(app):
            gateway = app.state.gateway
            for _ in range(args.threads):
                await request(app, CREATE)
            registry = gateway.manager.registry._primary()
            assert isinstance(registry, PostgresRegistry)
            query = await gateway._thread_query(None, ANONYMOUS)
            async with registry.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                )
                pids = [row["pid"] for row in await cur.fetchall()]
            layers: dict[str, Callable[[], Awaitable[Any]]] = {
                "registry.list_threads": lambda: registry.list_threads(query, first=10),
                "GraphQL threads(first: 10)": lambda: request(app, THREADS),
            }
            got: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
            try:
                for n in range(args.rounds):
                    order = list(WAYS) if n % 2 == 0 else list(reversed(WAYS))
                    for layer, call in layers.items():
                        for way in order:
                            PostgresRegistry._threads_of = WAYS[way]  # type: ignore[method-assign]
                            result = await per_call(call, args.calls, pids)
                            got.setdefault((layer, way), []).append(result)
            finally:
                PostgresRegistry._threads_of = WAYS["after"]  # type: ignore[method-assign]
    print(f"load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} rounds, us per call")
    print(f"  {'layer':28s} {'way':7s} {'our CPU':>8s} {'server CPU':>11s} {'wall':>8s}")
    medians: dict[tuple[str, str], list[float]] = {}
    for (layer, way), rounds in got.items():
        medians[layer, way] = [statistics.median(r[i] for r in rounds) for i in range(3)]
        ours, theirs, wall = medians[layer, way]
        print(f"  {layer:28s} {way:7s} {ours:8.1f} {theirs:11.1f} {wall:8.1f}")
    before, after = (
        medians["GraphQL threads(first: 10)", "before"],
        medians["GraphQL threads(first: 10)", "after"],
    )
    saved = before[0] - after[0]
    print(target("pgpage_our_cpu_saved", saved, "> 0 us a page", saved > 0, " us"))
    total = (before[0] + before[1]) - (after[0] + after[1])
    print(target("pgpage_total_cpu_saved", total, ">= 0 us a page", total >= 0, " us"))


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
