"""Shared fixtures: a fresh PostgreSQL database per test, a SQLite file per test.

PostgreSQL is the real server at PG_ADMIN_URL (default the local one). Where it
cannot be reached the Postgres tests fail with a message saying how to start
it: under CI=true they never skip silently.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

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


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    if not pg_reachable():
        ensure_pg_running()
    if not pg_reachable():
        pytest.fail(START_HINT, pytrace=False)
    name = f"ch_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(name)
    finally:
        ensure_pg_running()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
