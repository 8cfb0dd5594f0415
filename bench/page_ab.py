"""A history page of 20 checkpoints on PostgreSQL: two builds side by side, alternating.

    python bench/page_ab.py --before REV [--rounds 20] [--requests 100]

Serves `git archive REV src` (before) and this tree's `src` (after) with `code-hero
serve` on one scratch database, makes one thread of five runs of the 4-node graph
(`bench/chain.py`'s `small_graph`: about 30 root checkpoints, as `bench/gateway.py`),
then sends `bench/gateway.py`'s page request (values included) to the two servers in
rounds, alternating which goes first, each round `--requests` sequential requests over
`bench/gateway.py`'s raw keep-alive client. Prints per build the server's CPU per page
(its process, /proc: robust on a shared machine), the least and the median over the
rounds, and the median wall time of a request; the two builds' bodies are checked equal.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _common import ROOT, Replica, gql, scratch_database, target
from ab import sources
from gateway import PAGE, START, RawClient, cpu_ms, raw_data

GRAPHS = {"CODE_HERO_GRAPHS": f"small={ROOT / 'bench' / 'chain.py'}:small_graph"}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare against")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="page-ab-") as tmp:
        folder = Path(tmp)
        trees = {"before": sources(args.before, folder), "after": ROOT / "src"}
        async with scratch_database("ch_page_ab") as url:
            servers: dict[str, Replica] = {}
            try:
                for name, src in trees.items():  # one after the other: their migrations
                    servers[name] = Replica(url, folder, PYTHONPATH=str(src), **GRAPHS)
                    await servers[name].ready()
                ratio = await compare(servers, args.rounds, args.requests)
            finally:
                for server in servers.values():
                    server.stop()
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(target("page_server_cpu_after_over_before", ratio, "< 1", ratio < 1))


async def compare(servers: dict[str, Replica], rounds: int, requests: int) -> float:
    """Prints the comparison; the after/before ratio of the medians of server CPU per page."""
    async with httpx.AsyncClient(base_url=servers["after"].http, timeout=60) as client:
        thread = None
        for _ in range(5):
            run = await gql(
                client,
                START,
                input={"graph": "small", "threadId": thread, "input": {"steps": []}, "wait": True},
            )
            thread = run["startRun"]["threadId"]
    raws = {name: RawClient("127.0.0.1", s.port) for name, s in servers.items()}
    for raw in raws.values():
        await raw.__aenter__()
    try:
        page = {name: raw.request(PAGE, t=thread) for name, raw in raws.items()}
        bodies = {name: raw_data(await raws[name].send(page[name])) for name in servers}
        assert bodies["before"] == bodies["after"], "the two builds answer differently"
        assert len(bodies["after"]["thread"]["checkpoints"]["edges"]) == 20
        for name in servers:  # warm-up
            for _ in range(50):
                await raws[name].send(page[name])
        cpu: dict[str, list[float]] = {name: [] for name in servers}
        wall: dict[str, list[float]] = {name: [] for name in servers}
        for i in range(rounds):
            order = list(servers) if i % 2 == 0 else list(servers)[::-1]
            for name in order:
                pid = servers[name].process.pid
                before = cpu_ms(pid)
                for _ in range(requests):
                    start = time.perf_counter()
                    await raws[name].send(page[name])
                    wall[name].append((time.perf_counter() - start) * 1000)
                after = cpu_ms(pid)
                assert before is not None and after is not None, "needs /proc"
                cpu[name].append((after - before) / requests)
        print(f"history page of 20 ({rounds} rounds of {requests} requests each):")
        for name in servers:
            print(
                f"  {name:6s} server CPU per page: least {min(cpu[name]):.3f} ms, median "
                f"{statistics.median(cpu[name]):.3f} ms; wall median "
                f"{statistics.median(wall[name]):.3f} ms"
            )
        ratio = statistics.median(cpu["after"]) / statistics.median(cpu["before"])
        print(f"  after/before, server CPU per page (medians): {ratio:.3f}")
        return ratio
    finally:
        for raw in raws.values():
            await raw.__aexit__()


if __name__ == "__main__":
    asyncio.run(main())
