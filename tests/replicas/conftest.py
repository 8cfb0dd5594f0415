"""Real `code-hero serve` processes sharing one PostgreSQL database."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, with_port

ROOT = Path(__file__).resolve().parents[2]
SLOW = f"slow={ROOT / 'tests' / 'runs' / 'slow_graph.py'}:graph"
# One TLS context for every client the tests make: httpx builds one per client (its CA
# bundle loaded: ~20 ms CPU), and these tests make one per poll, several a second.
TLS = httpx.create_ssl_context()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Replica:
    name: str
    url: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> float:
        """SIGTERM; the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        return time.monotonic() - started


class Cluster:
    """Starts replicas on one database; stops them all at the end."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.replicas: list[Replica] = []

    def start(self, name: str, *, url: str | None = None, **env: str) -> Replica:
        """A replica on the cluster's database (or at `url`), once it answers /healthz."""
        url = url or self.url
        port = free_port()
        environ = {
            **os.environ,
            # The replicas run this tree's code, not whatever the venv has installed.
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            "CODE_HERO_GRAPHS": SLOW,
            "CODE_HERO_LEASE_SECONDS": "2",
            "CODE_HERO_SHUTDOWN_GRACE": "0.5",
            "CODE_HERO_HEALTH_INTERVAL": "1",
            # The durable fallback's files in the test's folder, not the working one's.
            "CODE_HERO_FALLBACK_PATH": str(self.tmp / "fallback.sqlite"),
            **env,
        }
        log = open(self.tmp / f"{name}-{port}.log", "wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "code_hero.cli",
                "serve",
                "--database-url",
                url,
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()  # the child has its own copy of the file
        replica = Replica(name, url, port, process)
        self.replicas.append(replica)
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=1, verify=TLS) as client:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise AssertionError(
                        f"{name} exited: {(self.tmp / f'{name}-{port}.log').read_text()}"
                    )
                try:
                    if client.get(f"{replica.http}/healthz").status_code == 200:
                        return replica
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise AssertionError(f"{name} did not answer /healthz")

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGKILL)
                replica.process.wait(10)


@pytest.fixture
def cluster(pg_database: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(pg_database, tmp_path)
    try:
        yield c
    finally:
        c.stop()


class ThreadedProxy:
    """A `BlackHoleProxy` on an event loop of its own, in a thread.

    The replicas reach the database through it while the test blocks (starting
    a replica waits synchronously), so it must not share the test's loop.
    """

    def __init__(self, host: str, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._proxy = BlackHoleProxy(host, port)

    @property
    def port(self) -> int:
        return self._proxy.port

    def _call(self, fn: Callable[[], None]) -> None:
        done: Future[None] = Future()

        def run() -> None:
            try:
                fn()
                done.set_result(None)
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        done.result(10)

    def refuse(self) -> None:
        """The database is down for every replica: connections closed, new ones refused."""
        self._call(self._proxy.refuse)

    def forward(self) -> None:
        """The database is back."""
        self._call(self._proxy.forward)

    def __enter__(self) -> ThreadedProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._proxy.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def pg_proxy() -> Iterator[ThreadedProxy]:
    """A proxy in front of the real PostgreSQL that the test can take down and bring back."""
    with ThreadedProxy("127.0.0.1", urlsplit(PG_ADMIN_URL).port or 5432) as proxy:
        yield proxy


@pytest.fixture
def second_pg_proxy() -> Iterator[ThreadedProxy]:
    """Another such proxy: replicas behind different ones lose the database apart."""
    with ThreadedProxy("127.0.0.1", urlsplit(PG_ADMIN_URL).port or 5432) as proxy:
        yield proxy


@pytest.fixture
def proxied_cluster(pg_proxy: ThreadedProxy, pg_database: str, tmp_path: Path) -> Iterator[Cluster]:
    """Replicas whose database URL goes through `pg_proxy` (stopped before it closes)."""
    c = Cluster(with_port(pg_database, pg_proxy.port), tmp_path)
    try:
        yield c
    finally:
        c.stop()
