"""Webhook latency: from a run's end (its finishedAt) to a loopback receiver's receipt.

    python bench/webhooks.py [--runs 50]

A gateway on a scratch PostgreSQL database runs the small 4-node graph one
run at a time with a webhook (RUN_SUCCEEDED) pointing at a receiver on
127.0.0.1 (allow-listed). Each delivery is verified with `standardwebhooks`;
the latency is the receipt time minus the payload's `finishedAt`, which the
run's end records in the same transaction that writes the outbox row.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvicorn
from _common import median, scratch_database, target
from standardwebhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from code_hero.auth import Caller
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.persistence.webhooks import WebhookEvent
from code_hero.runs.destinations import parse_allow_list
from code_hero.runs.executor import StartRun
from code_hero.runs.webhooks import WebhookSettings

GRAPH_FILE = Path(__file__).resolve().with_name("chain.py")
OWNER = Caller(user_id="bench")


async def latency(runs: int) -> list[str]:
    arrivals: asyncio.Queue[tuple[float, dict[str, str], bytes]] = asyncio.Queue()

    async def receive(request: Request) -> Response:
        at = time.time()
        await arrivals.put((at, dict(request.headers), await request.body()))
        return Response(status_code=204)

    app = Starlette(routes=[Route("/hook", receive, methods=["POST"])])
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # raises what stopped it
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    samples: list[float] = []
    try:
        async with scratch_database() as url:
            settings = GatewaySettings(
                checkpointer=create_postgres_checkpointer(url),
                graphs={"small": f"{GRAPH_FILE}:small_graph"},
                webhooks=WebhookSettings(allow=parse_allow_list("127.0.0.1")),
            )
            async with Gateway(settings) as gw:
                made = await gw.create_webhook(
                    f"http://127.0.0.1:{port}/hook", [WebhookEvent.RUN_SUCCEEDED], caller=OWNER
                )
                verifier = Webhook(made.secret)
                for _ in range(runs):
                    run = await gw.start_run(
                        StartRun(graph="small", input={"steps": []}, wait=True), caller=OWNER
                    )
                    assert run.status is RunStatus.SUCCESS, run.error
                    at, headers, body = await asyncio.wait_for(arrivals.get(), 30)
                    payload: dict[str, Any] = verifier.verify(body, headers)
                    assert payload["runId"] == run.run_id
                    finished = datetime.fromisoformat(payload["finishedAt"]).timestamp()
                    samples.append((at - finished) * 1000)
    finally:
        server.should_exit = True
        await serving
    p50 = median(samples)
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    print(f"postgres, {runs} runs one at a time, 4-node graph, receiver on loopback")
    print(f"  run end -> receipt: p50 {p50:.1f} ms, p90 {p90:.1f} ms, max {ordered[-1]:.1f} ms")
    print(f"  samples (ms): {json.dumps([round(x, 1) for x in samples[:20]])} ...")
    return [target("webhook_latency_p50", p50, "< 50 ms", p50 < 50, " ms")]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    lines = await latency(args.runs)
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
