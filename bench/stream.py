"""`runStream` against `startRun` + `runEvents`: the time to a run's first event.

    python bench/stream.py [--samples 40]

One `code-hero serve` process on a fresh PostgreSQL database, one
graphql-transport-ws socket opened once, alternating samples of:

- runStream: one `subscribe` message that starts the run and follows it; timed
  from sending it to the first `next` (seq 1);
- startRun + runEvents: the `startRun` mutation over the same socket, then,
  once its answer arrives, a `runEvents(runId)` subscription; timed from
  sending the mutation to the subscription's first `next` (seq 1).

Each sample runs the small 4-node graph to its end (every event drained)
before the next one starts. The target line compares the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Replica, median, scratch_database, target

GRAPHS = f"small={ROOT / 'bench' / 'chain.py'}:small_graph"
INPUT = {"graph": "small", "input": {"steps": []}}
STREAM = "subscription($input: StartRunInput!) { runStream(input: $input) { seq runId } }"
START = "mutation($input: StartRunInput!) { startRun(input: $input) { id } }"
FOLLOW = "subscription($id: ID!) { runEvents(runId: $id) { seq runId } }"


async def send(ws: ClientConnection, op: str, query: str, variables: dict[str, Any]) -> None:
    message = {"id": op, "type": "subscribe", "payload": {"query": query, "variables": variables}}
    await ws.send(json.dumps(message))


async def receive(ws: ClientConnection, op: str) -> dict[str, Any]:
    """The next message of operation `op` (pings answered, others' messages skipped)."""
    while True:
        message: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if message["type"] == "ping":
            await ws.send(json.dumps({"type": "pong"}))
            continue
        if message.get("id") != op:
            continue
        if message["type"] == "error" or "errors" in message.get("payload", {}):
            raise RuntimeError(message)
        return message


async def drain(ws: ClientConnection, op: str) -> None:
    while (await receive(ws, op))["type"] != "complete":
        pass


async def run_stream(ws: ClientConnection, op: str) -> float:
    """ms from the subscribe message to runStream's first event."""
    start = time.perf_counter()
    await send(ws, op, STREAM, {"input": INPUT})
    first = await receive(ws, op)
    elapsed = (time.perf_counter() - start) * 1000
    assert first["payload"]["data"]["runStream"]["seq"] == 1, first
    await drain(ws, op)
    return elapsed


async def start_then_follow(ws: ClientConnection, op: str) -> float:
    """ms from the startRun message to runEvents' first event, on the same socket."""
    start = time.perf_counter()
    await send(ws, f"{op}-start", START, {"input": INPUT})
    answer = await receive(ws, f"{op}-start")
    run_id = answer["payload"]["data"]["startRun"]["id"]
    await send(ws, op, FOLLOW, {"id": run_id})
    first = await receive(ws, op)
    elapsed = (time.perf_counter() - start) * 1000
    assert first["payload"]["data"]["runEvents"]["seq"] == 1, first
    await drain(ws, op)  # (the mutation's `complete` came meanwhile: skipped)
    return elapsed


async def compare(replica: Replica, samples: int) -> tuple[float, float]:
    streamed, separate = [], []
    protocols: Any = ["graphql-transport-ws"]
    async with connect(replica.ws, subprotocols=protocols) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        await ws.recv()
        for i in range(3):  # warm up both paths
            await run_stream(ws, f"w{i}")
            await start_then_follow(ws, f"v{i}")
        for i in range(samples):
            if i % 2:
                separate.append(await start_then_follow(ws, f"s{i}"))
                streamed.append(await run_stream(ws, f"r{i}"))
            else:
                streamed.append(await run_stream(ws, f"r{i}"))
                separate.append(await start_then_follow(ws, f"s{i}"))
    return median(streamed), median(separate)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database() as url:
            replica = Replica(url, Path(tmp), CODE_HERO_GRAPHS=GRAPHS)
            try:
                await replica.ready()
                streamed, separate = await compare(replica, args.samples)
            finally:
                replica.stop()
    print(
        f"first event, median of {args.samples} (ms): runStream {streamed:.2f}, "
        f"startRun + runEvents on one open socket {separate:.2f}"
    )
    print()
    print(
        target(
            "runstream_first_event",
            streamed,
            f"runStream sooner than {separate:.3g} ms",
            streamed < separate,
            " ms",
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
