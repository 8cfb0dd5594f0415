"""Replicas on one PostgreSQL, measured side by side in one run.

    python bench/scale.py [--seconds 6] [--subscribers 1000]

1. Runs per second of a small 4-node graph with 64 runs in flight, through
   one `code-hero serve` process and through two on the same database
   (startRun with wait over HTTP, clients spread over the replicas).
2. The delay from an event being stored (its batch's NOTIFY reaching a
   listener here, i.e. the commit) to its arrival at a WebSocket subscriber
   on the other replica: median and 99th percentile.
3. N WebSocket subscribers on one run, half on each replica: every one
   receives every event; the spread between the first and the last
   subscriber to receive each event (99th percentile), and the memory each
   idle subscriber costs its replica (RSS growth / N).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Replica, scratch_database, target

GRAPHS = (
    f"small={ROOT / 'bench' / 'chain.py'}:small_graph,"
    f"slow={ROOT / 'tests' / 'runs' / 'slow_graph.py'}:graph"
)
START = "mutation($input: StartRunInput!) { startRun(input: $input) { id status } }"
SUBSCRIBE = "subscription($id: ID!) { runEvents(runId: $id) { seq __typename } }"
VERBOSE = False
REPLICA_ENV = {
    "CODE_HERO_GRAPHS": GRAPHS,
    "CODE_HERO_MAX_CONCURRENT_RUNS": "32",
    "CODE_HERO_MAX_SUBSCRIPTIONS": "10",
}


async def start_run(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = (
        await client.post("/graphql", json={"query": START, "variables": {"input": fields}})
    ).json()
    if "errors" in body:
        raise RuntimeError(body["errors"])
    return body["data"]["startRun"]


async def throughput(
    replicas: list[Replica], seconds: float, in_flight: int = 64
) -> tuple[float, int]:
    clients = [
        httpx.AsyncClient(
            base_url=r.http, timeout=60, limits=httpx.Limits(max_connections=in_flight)
        )
        for r in replicas
    ]
    done = failures = 0
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal done, failures
        client = clients[i % len(clients)]
        while time.perf_counter() < deadline:
            try:
                run = await start_run(client, graph="small", input={"steps": []}, wait=True)
                if run["status"] == "SUCCESS":
                    done += 1
                else:
                    failures += 1
            except Exception:
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    elapsed = time.perf_counter() - start
    for client in clients:
        await client.aclose()
    return done / elapsed, failures


class Subscriber:
    """One WebSocket subscriber: when it received each seq."""

    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}
        self.errors: list[Any] = []
        self.subscribed = asyncio.Event()
        self.done = asyncio.Event()

    async def run(self, url: str, run_id: str) -> None:
        protocols: Any = ["graphql-transport-ws"]
        async with connect(url, subprotocols=protocols, max_queue=None) as ws:
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
            self.subscribed.set()
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "next" and message["payload"].get("errors"):
                    self.errors.append(message["payload"]["errors"])
                elif message.get("type") == "next":
                    self.arrivals[message["payload"]["data"]["runEvents"]["seq"]] = (
                        time.perf_counter()
                    )
                elif message.get("type") in ("complete", "error"):
                    if message.get("type") == "error":
                        self.errors.append(message.get("payload"))
                    break
        self.done.set()


async def listen_commits(
    url: str, run_id: str, commits: dict[int, float], stop: asyncio.Event
) -> None:
    """When each seq of the run was committed: its batch's NOTIFY arriving here."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("LISTEN code_hero_events")
        gen = conn.notifies(timeout=0.2)
        while not stop.is_set():
            async for note in gen:
                rid, _, first, last = note.payload.split(" ")
                if rid == run_id:
                    now = time.perf_counter()
                    for seq in range(int(first), int(last) + 1):
                        commits.setdefault(seq, now)
            gen = conn.notifies(timeout=0.2)


async def cross_replica_delay(a: Replica, b: Replica, url: str) -> tuple[float, float]:
    """Run on A (the only one executing), subscriber on B."""
    delays: list[float] = []
    async with httpx.AsyncClient(base_url=a.http, timeout=60) as client:
        for _ in range(5):
            run = await start_run(client, graph="slow", input={"delay": 0.05}, wait=False)
            sub, commits, stop = Subscriber(), {}, asyncio.Event()
            listener = asyncio.create_task(listen_commits(url, run["id"], commits, stop))
            await asyncio.sleep(0.05)
            await asyncio.wait_for(sub.run(b.ws, run["id"]), 60)
            stop.set()
            await listener
            delays += [(sub.arrivals[s] - commits[s]) * 1000 for s in sub.arrivals if s in commits]
    delays.sort()
    return statistics.median(delays), delays[int(len(delays) * 0.99) - 1]


async def fan_out(replicas: list[Replica], count: int) -> tuple[float, float, bool]:
    async with httpx.AsyncClient(base_url=replicas[0].http, timeout=60) as client:
        rss_before = [r.rss_kib() for r in replicas]
        run = await start_run(client, graph="slow", input={"delay": 1.5})  # idle at first
        subs = [Subscriber() for _ in range(count)]
        tasks = [
            asyncio.create_task(s.run(replicas[i % len(replicas)].ws, run["id"]))
            for i, s in enumerate(subs)
        ]
        await asyncio.wait_for(asyncio.gather(*(s.subscribed.wait() for s in subs)), 120)
        await asyncio.sleep(0.5)
        rss_after = [r.rss_kib() for r in replicas]
        per_sub_kb = (sum(rss_after) - sum(rss_before)) / count
        await asyncio.wait_for(asyncio.gather(*tasks), 180)
    errors = [e for s in subs for e in s.errors]
    if errors:
        print(f"{len(errors)} subscribers got errors, the first: {errors[0]}")
    all_seqs = set().union(*(s.arrivals for s in subs))
    complete = not errors and all(set(s.arrivals) == all_seqs for s in subs)
    spreads = sorted(  # among those that got it (an incomplete fan-out fails anyway)
        (max(times) - min(times)) * 1000
        for times in ([s.arrivals[q] for s in subs if q in s.arrivals] for q in all_seqs)
    )
    if VERBOSE:
        got = {q: [s.arrivals[q] for s in subs if q in s.arrivals] for q in all_seqs}
        by_seq = {q: max(t) - min(t) for q, t in got.items()}
        print("spread by seq (ms):", {q: round(v * 1000) for q, v in sorted(by_seq.items())})
    p99 = spreads[max(int(len(spreads) * 0.99) - 1, 0)]
    return p99, per_sub_kb, complete


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    args = parser.parse_args()
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database() as url:
            a = Replica(url, Path(tmp), **REPLICA_ENV)
            await a.ready()
            one, fail1 = await throughput([a], args.seconds)
            b = Replica(url, Path(tmp), **REPLICA_ENV)
            await b.ready()
            two, fail2 = await throughput([a, b], args.seconds)
            print(
                f"runs/s, 64 in flight: one replica {one:.1f} (failures {fail1}), "
                f"two replicas {two:.1f} (failures {fail2}), ratio {two / one:.2f}"
            )
            b.stop()  # the delay: the run executes on A, the subscriber listens on B
            b = Replica(url, Path(tmp), **REPLICA_ENV)
            await b.ready()
            median, p99 = await cross_replica_delay(a, b, url)
            print(
                "stored -> subscriber on the other replica: "
                f"median {median:.2f} ms, p99 {p99:.2f} ms"
            )
            lines.append(
                target("cross_replica_event_delay_median", median, "< 10 ms", median < 10, " ms")
            )
            spread, per_sub, complete = await fan_out([a, b], args.subscribers)
            print(
                f"{args.subscribers} subscribers over two replicas: "
                "every event to every subscriber: "
                f"{complete}; p99 spread {spread:.1f} ms; {per_sub:.1f} KB per idle subscriber"
            )
            lines.append(
                target("fan_out_p99_spread", spread, "< 100 ms", spread < 100 and complete, " ms")
            )
            lines.append(
                target("memory_per_idle_subscriber", per_sub, "< 50 KB", per_sub < 50, " KB")
            )
            a.stop()
            b.stop()
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
