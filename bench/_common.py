"""Helpers shared by the benchmarks: a throw-away database, a replica, GraphQL, timing."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("CODE_HERO_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


@asynccontextmanager
async def scratch_database(prefix: str = "ch_bench") -> AsyncIterator[str]:
    """A fresh PostgreSQL database named `prefix`_<random>, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    base = ADMIN_URL.rpartition("/")[0]
    async with await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        async with await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True) as conn:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def compile_sources(python: str, path: str) -> None:
    """Compile the server's sources on `path` to bytecode beside them, as installing
    the package does. Where PYTHONDONTWRITEBYTECODE is set (this machine sets it), a
    server run from a checkout otherwise compiles every module of its own from source
    at each start: slower, and 1.2 MiB more resident on PostgreSQL after start-up
    (the compiler's leftovers in pymalloc's arenas; 0.2 after bench/peer.py's
    workload, which reuses most of them), a cost `langgraph dev`, installed with its
    bytecode, never pays."""
    for folder in path.split(os.pathsep):
        if folder:
            subprocess.run([python, "-m", "compileall", "-q", folder], check=True)


class Replica:
    """One `code-hero serve` process of this tree's sources (or `tree`'s, under
    `python`), on `url`."""

    def __init__(
        self, url: str, logdir: Path, *, python: str = sys.executable, tree: Path = ROOT, **env: str
    ) -> None:
        self.port = free_port()
        self.log = open(logdir / f"replica-{self.port}.log", "wb")
        environ = {
            **os.environ,
            "PYTHONPATH": str(tree / "src"),
            # the outage fallback's file beside the log, not in the checkout
            "CODE_HERO_FALLBACK_PATH": str(logdir / f"fallback-{self.port}.sqlite"),
            **env,
        }
        compile_sources(python, environ["PYTHONPATH"])
        self.process = subprocess.Popen(
            [
                *(python, "-m", "code_hero.cli", "serve", "--database-url", url),
                *("--port", str(self.port), "--log-level", "warning"),
            ],
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=tree,
        )
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/graphql"

    async def ready(self) -> None:
        """Wait until /healthz answers 200."""
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    if (await client.get(f"{self.http}/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError(f"replica on port {self.port} did not start")

    def rss_kib(self) -> int:
        """The process's resident memory."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def gql(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    """The data of a GraphQL request over HTTP; RuntimeError when it has errors."""
    body = (await client.post("/graphql", json={"query": query, "variables": variables})).json()
    if "errors" in body:
        raise RuntimeError(body["errors"])
    data: dict[str, Any] = body["data"]
    return data


async def throughput(
    run_once: Callable[[int, int], Awaitable[Any]], *, workers: int, seconds: float
) -> tuple[float, int]:
    """Runs per second with `workers` concurrent loops for `seconds`; and failures."""
    deadline = time.perf_counter() + seconds
    done = failures = 0

    async def loop(worker: int) -> None:
        nonlocal done, failures
        i = 0
        while time.perf_counter() < deadline:
            try:
                await run_once(worker, i)
                done += 1
            except Exception:
                failures += 1
            i += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in range(workers)))
    return done / (time.perf_counter() - start), failures


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


def target(name: str, value: float, goal: str, met: bool, unit: str = "") -> str:
    """One closing line per target, in the form the team reads."""
    return f"target {name}: {value:.3g}{unit} (goal {goal}) {'met' if met else 'missed'}"
