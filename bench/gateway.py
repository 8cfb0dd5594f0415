"""What the GraphQL layer adds, side by side in one run.

    python bench/gateway.py [--samples 200]

1. One thread-history page (20 checkpoints, values included) through GraphQL
   over HTTP to a `code-hero serve` process, against the same page read from
   the manager directly (same PostgreSQL database, alternating samples):
   the median difference is what GraphQL adds.
2. The time from sending `startRun` to the first event received by a
   WebSocket subscriber (`threadEvents` on the run's thread, built-in graph).
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
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import scratch_database, target
from scale import GRAPHS, Replica

from code_hero.checkpointing import (
    EnhancedCheckpointerManager,
    create_postgres_checkpointer,
)

PAGE = """query($t: ID!) { thread(id: $t) { checkpoints(first: 20) {
  edges { cursor node { id step source next values metadata } }
  pageInfo { hasNextPage endCursor } } } }"""
START = "mutation($input: StartRunInput!) { startRun(input: $input) { id threadId } }"
FOLLOW = "subscription($t: ID!) { threadEvents(threadId: $t) { seq __typename } }"


async def gql(client: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = (await client.post("/graphql", json={"query": query, "variables": variables})).json()
    if "errors" in body:
        raise RuntimeError(body["errors"])
    return body["data"]


async def page_overhead(replica: Replica, url: str, samples: int) -> tuple[float, float, float]:
    async with httpx.AsyncClient(base_url=replica.http, timeout=60) as client:
        thread = None
        for _ in range(5):  # 5 runs of the small graph: about 30 root checkpoints
            run = await gql(
                client,
                START,
                {
                    "input": {
                        "graph": "small",
                        "threadId": thread,
                        "input": {"steps": []},
                        "wait": True,
                    }
                },
            )
            thread = run["startRun"]["threadId"]
        via_http, direct = [], []
        async with EnhancedCheckpointerManager(create_postgres_checkpointer(url)) as manager:
            for _ in range(samples):
                start = time.perf_counter()
                data = await gql(client, PAGE, {"t": thread})
                via_http.append((time.perf_counter() - start) * 1000)
                assert len(data["thread"]["checkpoints"]["edges"]) == 20
                start = time.perf_counter()
                page = await manager.list_checkpoints(thread, first=20)
                for view in page.items:  # rendered when asked for, as the GraphQL page does
                    assert isinstance(view.values, dict)
                direct.append((time.perf_counter() - start) * 1000)
                assert len(page.items) == 20
    h, d = statistics.median(via_http), statistics.median(direct)
    return h, d, h - d


async def wait_finished(client: httpx.AsyncClient, run_id: str) -> None:
    """Poll until the run has ended (its events drained before the next sample)."""
    query = "query($id: ID!) { run(id: $id) { status } }"
    for _ in range(3000):
        data = await gql(client, query, {"id": run_id})
        if data["run"]["status"] not in ("PENDING", "RUNNING"):
            return
        await asyncio.sleep(0.01)


async def first_event_latency(replica: Replica, samples: int) -> float:
    latencies = []
    async with httpx.AsyncClient(base_url=replica.http, timeout=60) as client:
        first = await gql(client, START, {"input": {"message": "hello", "wait": True}})
        thread = first["startRun"]["threadId"]
        protocols: Any = ["graphql-transport-ws"]
        async with connect(replica.ws, subprotocols=protocols) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            await ws.recv()
            await ws.send(
                json.dumps(
                    {
                        "id": "t",
                        "type": "subscribe",
                        "payload": {"query": FOLLOW, "variables": {"t": thread}},
                    }
                )
            )
            await asyncio.sleep(0.2)
            for _ in range(samples):
                start = time.perf_counter()
                run = await gql(
                    client,
                    START,
                    {
                        "input": {
                            "threadId": thread,
                            "message": "Help me build a FastAPI application",
                        }
                    },
                )
                message = json.loads(await ws.recv())
                latencies.append((time.perf_counter() - start) * 1000)
                assert message["type"] == "next"
                await wait_finished(client, run["startRun"]["id"])
                while True:
                    try:
                        await asyncio.wait_for(ws.recv(), 0.2)
                    except TimeoutError:
                        break
    return statistics.median(latencies)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database() as url:
            replica = Replica(url, Path(tmp), CODE_HERO_GRAPHS=GRAPHS)  # "small" too
            try:
                await replica.ready()
                h, d, added = await page_overhead(replica, url, args.samples)
                print(
                    f"history page of 20 checkpoints (median ms): GraphQL over HTTP {h:.2f}, "
                    f"manager directly {d:.2f}, GraphQL adds {added:.2f}"
                )
                first = await first_event_latency(replica, max(args.samples // 10, 10))
                print(f"startRun -> first event at a WebSocket subscriber: median {first:.2f} ms")
            finally:
                replica.stop()
    print()
    print(target("graphql_page_overhead", added, "< 1 ms", added < 1, " ms"))
    print(target("start_run_to_first_event", first, "< 20 ms", first < 20, " ms"))


if __name__ == "__main__":
    asyncio.run(main())
