"""Real `code-hero serve` processes sharing one PostgreSQL database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SLOW = f"slow={ROOT / 'tests' / 'runs' / 'slow_graph.py'}:graph"


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

    def start(self, name: str, **env: str) -> Replica:
        port = free_port()
        environ = {
            **os.environ,
            "CODE_HERO_GRAPHS": SLOW,
            "CODE_HERO_LEASE_SECONDS": "2",
            "CODE_HERO_SHUTDOWN_GRACE": "0.5",
            "CODE_HERO_HEALTH_INTERVAL": "1",
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
                self.url,
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
        replica = Replica(name, self.url, port, process)
        self.replicas.append(replica)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(
                    f"{name} exited: {(self.tmp / f'{name}-{port}.log').read_text()}"
                )
            try:
                if httpx.get(f"{replica.http}/healthz", timeout=1).status_code == 200:
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
