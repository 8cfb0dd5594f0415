"""Long uptime in small: many runs over two replicas, memory measured from outside.

    python bench/soak.py [--runs 5000] [--warmup 1000] [--in-flight 16]

Two `code-hero serve` processes share one PostgreSQL database. Clients start
runs of a small 4-node graph on one replica and follow each over a fresh
graphql-transport-ws socket on the other (the events cross by LISTEN/NOTIFY);
every 10th subscriber hangs up after two events, every 20th run is cancelled
at once (often before any replica claimed it). Prints:

- `rss_growth_per_1000_runs`: VmRSS of each replica (/proc/PID/status) after
  the warm-up and at the end; the larger growth, per 1,000 runs.
- `internal_maps_idle`: every `code_hero_internal_entries{map=...}` gauge of
  both replicas' `/metrics` once the runs are over: all back to 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Replica, gql, scratch_database, target

GRAPHS = f"small={ROOT / 'bench' / 'chain.py'}:small_graph"
START = "mutation($input: StartRunInput!) { startRun(input: $input) { id status } }"
CANCEL = "mutation($id: ID!) { cancelRun(id: $id) { status } }"
STATUS = "query($id: ID!) { run(id: $id) { status } }"
SUBSCRIBE = "subscription($id: ID!) { runEvents(runId: $id) { seq } }"
GAUGE = re.compile(r'^code_hero_internal_entries\{map="([^"]+)"\} (\S+)$', re.MULTILINE)


class SoakReplica(Replica):
    """A replica whose internal maps can be read from /metrics."""

    async def internal_entries(self) -> dict[str, float]:
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{self.http}/metrics")).text
        return {name: float(value) for name, value in GAUGE.findall(text)}


async def follow(url: str, run_id: str, leave_after: int | None) -> int:
    """Subscribe on a fresh socket; the events received before completing (or leaving)."""
    received = 0
    protocols: Any = ["graphql-transport-ws"]
    async with connect(url, subprotocols=protocols) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        json.loads(await ws.recv())
        await ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": SUBSCRIBE, "variables": {"id": run_id}},
                }
            )
        )
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            elif message.get("type") == "next":
                received += 1
                if leave_after is not None and received >= leave_after:
                    break
            elif message.get("type") in ("complete", "error"):
                break
    return received


async def until_ended(client: httpx.AsyncClient, run_id: str) -> str:
    while True:
        status = str((await gql(client, STATUS, id=run_id))["run"]["status"])
        if status not in ("PENDING", "RUNNING"):
            return status
        await asyncio.sleep(0.05)


class Soak:
    def __init__(self, replicas: list[SoakReplica], in_flight: int) -> None:
        self.replicas = replicas
        self.in_flight = in_flight
        self.clients = [httpx.AsyncClient(base_url=r.http, timeout=120) for r in replicas]
        self.issued = 0
        self.done = 0
        self.failures = 0
        self.statuses: dict[str, int] = {}

    async def one(self, n: int) -> None:
        here, there = n % 2, 1 - n % 2
        client = self.clients[here]
        run = (await gql(client, START, input={"graph": "small", "input": {"steps": []}}))[
            "startRun"
        ]
        if n % 20 == 0:
            status = (await gql(client, CANCEL, id=run["id"]))["cancelRun"]["status"]
        else:
            leave = 2 if n % 10 == 5 else None
            await asyncio.wait_for(follow(self.replicas[there].ws, run["id"], leave), 120)
            status = await until_ended(self.clients[there], run["id"])
        self.statuses[status] = self.statuses.get(status, 0) + 1

    async def until(self, total: int) -> None:
        """Go on until `total` runs have ended."""

        async def worker() -> None:
            while self.issued < total:
                n = self.issued
                self.issued += 1
                try:
                    await self.one(n)
                    self.done += 1
                except Exception as exc:
                    self.failures += 1
                    if self.failures <= 5:
                        print(f"  run {n} failed: {exc!r}"[:300], file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(self.in_flight)))

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()


async def soak(runs: int, warmup: int, in_flight: int) -> list[str]:
    logdir = tempfile.mkdtemp(prefix="code-hero-soak-")
    async with scratch_database() as url:
        replicas = [
            SoakReplica(
                url, Path(logdir), CODE_HERO_GRAPHS=GRAPHS, CODE_HERO_MAX_CONCURRENT_RUNS="16"
            )
            for _ in range(2)
        ]
        soak = Soak(replicas, in_flight)
        try:
            for replica in replicas:
                await replica.ready()
            started = time.perf_counter()
            await soak.until(warmup)
            await asyncio.sleep(2)  # the last runs' relays and sockets settle
            warm = [r.rss_kib() / 1024 for r in replicas]
            warm_at = time.perf_counter()
            print(
                f"warm-up: {warmup} runs in {warm_at - started:.0f}s; "
                f"RSS {', '.join(f'{m:.1f}' for m in warm)} MiB"
            )
            await soak.until(runs)
            elapsed = time.perf_counter() - warm_at
            await asyncio.sleep(5)  # past the touch throttle and the slowest re-check
            end = [r.rss_kib() / 1024 for r in replicas]
            maps = [await r.internal_entries() for r in replicas]
        finally:
            await soak.close()
            for replica in replicas:
                replica.stop()
    measured = runs - warmup
    print(
        f"{measured} more runs in {elapsed:.0f}s ({measured / elapsed:.1f} runs/s, "
        f"{in_flight} in flight); RSS {', '.join(f'{m:.1f}' for m in end)} MiB; "
        f"ended {soak.statuses}; failures {soak.failures}"
    )
    growth = max((e - w) / measured * 1000 for w, e in zip(warm, end, strict=True))
    sizes = {f"{name}@{i}": value for i, found in enumerate(maps) for name, value in found.items()}
    listed = ", ".join(f"{name}={value:g}" for name, value in sorted(sizes.items()))
    idle = bool(sizes) and not any(sizes.values())
    healthy = soak.failures <= runs // 100  # else it measured errors, not runs
    if not healthy:
        print(f"{soak.failures} of {runs} runs failed: the targets count as missed")
    if soak.failures:
        print(f"the replicas' logs are in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return [
        target("rss_growth_per_1000_runs", growth, "< 1", healthy and growth < 1, " MiB"),
        f"target internal_maps_idle: {listed} (goal: back to idle size) "
        f"{'met' if healthy and idle else 'missed'}",
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=16)
    args = parser.parse_args()
    lines = await soak(args.runs, args.warmup, args.in_flight)
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
