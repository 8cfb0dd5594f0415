"""Shared fixtures: a fresh PostgreSQL database per test, a SQLite file per test.

PostgreSQL is the real server at PG_ADMIN_URL (default the local one). Where it
cannot be reached the Postgres tests fail with a message saying how to start
it: under CI=true they never skip silently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from code_hero.config import (
    CheckpointerConfig,
    create_memory_checkpointer,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)

PG_ADMIN_URL = os.environ.get("CODE_HERO_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
START_HINT = (
    "PostgreSQL is not answering on 127.0.0.1:5432. Start it with:\n"
    "  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)
BACKENDS = ["memory", "sqlite", "postgres"]


def _pg_url(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def pg_reachable() -> bool:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def ensure_pg_running() -> None:
    """Start the local cluster if it is down (fault tests must leave it running)."""
    if pg_reachable():
        return
    versions = os.listdir("/etc/postgresql") if os.path.isdir("/etc/postgresql") else []
    if versions:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[0], "main", "start"],
            check=False,
            capture_output=True,
        )


class _Databases:
    """The test databases of this process (an xdist worker), each a test's own.

    CREATE DATABASE writes its template into the WAL and waits for it to be flushed,
    DROP DATABASE waits for a checkpoint it asks for: together most of a short
    PostgreSQL test's setup and teardown. So the next database of each template is made
    while the current test runs, and a test's database is dropped while the next ones
    run; the last are dropped when the session ends."""

    def __init__(self) -> None:
        # A database made is not queued behind the drops. Each DROP DATABASE asks for a
        # checkpoint and waits for it; drops under way together share one, so they go
        # side by side (four serial drops took 14 s on a busy cluster, four at once 1.6).
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-db-make")
        self._dropper = ThreadPoolExecutor(max_workers=4, thread_name_prefix="test-db-drop")
        self._spares: dict[str | None, Future[str]] = {}
        self._drops: set[Future[None]] = set()

    def take(self, template: str | None) -> str:
        """A new database's name (a copy of `template`, else empty)."""
        spare = self._spares.pop(template, None)
        name = None
        if spare is not None:
            with contextlib.suppress(Exception):  # made while a test had stopped the server
                name = spare.result()
        if name is None:
            name = self._make(template)
        self._spares[template] = self._maker.submit(self._make, template)
        return name

    def drop(self, name: str) -> None:
        self._drops.add(self._dropper.submit(self._drop, name))
        self._drops = {drop for drop in self._drops if not drop.done()}

    def settle(self) -> None:
        """Wait for the databases being made or dropped: their connections closed, no
        descriptor of this process is freed or taken behind a test's back."""
        concurrent.futures.wait([*self._drops, *self._spares.values()])

    def close(self) -> None:
        """Drop the spares; wait for every drop."""
        for spare in self._spares.values():
            with contextlib.suppress(Exception):
                self.drop(spare.result())
        self._spares.clear()
        self._maker.shutdown(wait=True)
        self._dropper.shutdown(wait=True)

    @staticmethod
    def _make(template: str | None) -> str:
        name = f"ch_test_{uuid.uuid4().hex[:12]}"
        copy = "" if template is None else f' TEMPLATE "{template}"'
        deadline = time.monotonic() + 10
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            while True:
                try:
                    conn.execute(f'CREATE DATABASE "{name}"{copy}')
                    return name
                except psycopg.errors.ObjectInUse:
                    # The template's last sessions (a closed gateway's) may not have
                    # ended on the server yet.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    @staticmethod
    def _drop(name: str) -> None:
        ensure_pg_running()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_databases = _Databases()


def settle_test_databases() -> None:
    """Wait for this process's test databases being made or dropped in the background."""
    _databases.settle()


def pytest_sessionfinish() -> None:
    _databases.close()


@contextmanager
def _fresh_database(template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database (a copy of `template`, else empty); dropped afterwards."""
    if not pg_reachable():
        ensure_pg_running()
    if not pg_reachable():
        pytest.fail(START_HINT, pytrace=False)
    name = _databases.take(template)
    try:
        yield _pg_url(name)
    finally:
        _databases.drop(name)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    with _fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def pg_migrated_template() -> Iterator[str]:
    """A database holding the gateway's tables (its migrations' rows) and nothing else,
    made once per worker by a gateway opened and closed on it: what
    `pg_migrated_database` copies."""
    from code_hero.gateway import Gateway, GatewaySettings

    async def migrate(url: str) -> None:
        settings = GatewaySettings(checkpointer=create_postgres_checkpointer(url))
        async with Gateway(settings):
            pass

    with _fresh_database() as url:
        # On a thread of its own: the first test to ask may be inside a running event
        # loop (an async fixture's `request.getfixturevalue`), where asyncio.run refuses.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, migrate(url)).result()
        yield urlsplit(url).path.lstrip("/")


@pytest.fixture
def pg_migrated_database(pg_migrated_template: str) -> Iterator[str]:
    """As `pg_database`, with the gateway's tables made already (a copy of
    `pg_migrated_template`): for tests of what comes after a gateway's first open,
    which then need not migrate an empty database each time."""
    with _fresh_database(pg_migrated_template) as url:
        yield url


@pytest.fixture
def sqlite_path(tmp_path: Path) -> str:
    """A path for a SQLite file that does not exist yet."""
    return str(tmp_path / "checkpoints.sqlite")


def make_config(kind: str, request: pytest.FixtureRequest, **kwargs: object) -> CheckpointerConfig:
    """A config of the given backend kind, backed by a fresh database."""
    if kind == "memory":
        return create_memory_checkpointer(**kwargs)  # type: ignore[arg-type]
    if kind == "sqlite":
        path = request.getfixturevalue("sqlite_path")
        return create_sqlite_checkpointer(path, **kwargs)  # type: ignore[arg-type]
    if kind == "postgres":
        url = request.getfixturevalue("pg_database")
        return create_postgres_checkpointer(url, **kwargs)  # type: ignore[arg-type]
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def backend_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    """One config per backend kind: the conformance suites run on all three."""
    return make_config(request.param, request, health_check_interval=0.2)


@pytest.fixture
async def manager(backend_config: CheckpointerConfig) -> AsyncIterator[object]:
    """An initialized EnhancedCheckpointerManager on each backend."""
    from code_hero.persistence.manager import EnhancedCheckpointerManager

    mgr = EnhancedCheckpointerManager(backend_config)
    await mgr.initialize()
    try:
        yield mgr
    finally:
        await mgr.cleanup()
