"""The CPU of one thread-list page and one deletion, layer by layer, in-process.

    python bench/reqcpu.py [--backend sqlite|postgres|both] [--samples 1500]

Builds the app as `code-hero serve` does (no network: each request is handed to the
ASGI app directly), fills `--threads` threads (`createThread`), then measures this
process's CPU (user + system, `getrusage`) per call, the least of three rounds of
`--samples` calls, for the layers under `bench/peer.py`'s thread-list and delete rows:
the primary's registry (`list_threads`, `purge_idle_thread`), the manager, the
whole GraphQL request, and a `{ __typename }` request (what any request costs).
CPU, not wall time: on a busy two-core machine another process's turn lands in the
wall time of whatever waits for it (a send to PostgreSQL that wakes its backend),
not in this process's CPU. What uvicorn adds over the socket is not measured here
(`bench/ab.py` gives the server process's CPU per request over HTTP).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson
from _common import scratch_database
from peer import DELETE, THREADS

from code_hero.app import create_app
from code_hero.auth import ANONYMOUS
from code_hero.config import (
    CheckpointerConfig,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)
from code_hero.gateway import GatewaySettings
from code_hero.settings import AppSettings

CREATE = "mutation { createThread(input: {}) { id } }"


async def request(app: Any, query: str, **variables: Any) -> dict[str, Any]:
    """One POST /graphql handed to the ASGI app; the response body."""
    raw = orjson.dumps({"query": query, "variables": variables})
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    messages = [{"type": "http.request", "body": raw, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    body: dict[str, Any] = orjson.loads(sent[-1]["body"])
    if "errors" in body:
        raise RuntimeError(body["errors"])
    return body


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def per_call(call: Callable[[], Awaitable[Any]], samples: int) -> float:
    """Microseconds of CPU per call: the least of three rounds."""
    for _ in range(50):
        await call()
    rounds = []
    for _ in range(3):
        start = cpu()
        for _ in range(samples):
            await call()
        rounds.append((cpu() - start) / samples * 1e6)
    return min(rounds)


async def measure(config: CheckpointerConfig, label: str, samples: int, threads: int) -> None:
    app = create_app(AppSettings(gateway=GatewaySettings(checkpointer=config)))
    async with app.router.lifespan_context(app):
        gateway = app.state.gateway
        doomed = [
            (await request(app, CREATE))["data"]["createThread"]["id"]
            for _ in range(threads + 2 * (3 * samples + 50))
        ]
        registry = gateway.manager.registry._primary()
        query = await gateway._thread_query(None, ANONYMOUS)

        def purge() -> Awaitable[Any]:
            return registry.purge_idle_thread(doomed.pop(), None)

        rows = {
            "registry.list_threads": lambda: registry.list_threads(query, first=10),
            "manager.threads_page": lambda: gateway.manager.threads_page(query, first=10),
            "GraphQL threads(first: 10)": lambda: request(app, THREADS),
            "registry.purge_idle_thread": purge,
            "GraphQL deleteThread": lambda: request(app, DELETE, id=doomed.pop()),
            "GraphQL { __typename }": lambda: request(app, "{ __typename }"),
        }
        print(f"{label}: CPU per call (us), least of 3 rounds of {samples}")
        for name, call in rows.items():
            print(f"  {name:28s} {await per_call(call, samples):7.0f}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--samples", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1000)
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            config = create_sqlite_checkpointer(f"{tmp}/reqcpu.sqlite")
            await measure(config, "SQLite", args.samples, args.threads)
    if args.backend in ("postgres", "both"):
        async with scratch_database("ch_reqcpu") as url:
            config = create_postgres_checkpointer(url)
            await measure(config, "PostgreSQL", args.samples, args.threads)


if __name__ == "__main__":
    try:
        import uvloop  # as uvicorn's "auto" loop, when installed
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
