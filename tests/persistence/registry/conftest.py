"""The `registry` fixture: a registry, set up, on each kind of database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
import pytest

from code_hero.persistence.records import Registry
from code_hero.persistence.registry import PostgresRegistry, SqliteRegistry
from tests.persistence.registry.support import KINDS, make_pool


@asynccontextmanager
async def _postgres(url: str) -> AsyncIterator[PostgresRegistry]:
    pool = make_pool(url)
    await pool.open()
    try:
        reg = PostgresRegistry(pool)
        await reg.setup()
        yield reg
    finally:
        await pool.close()


@pytest.fixture(params=KINDS)
async def registry(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Registry]:
    """A registry, set up, on a fresh database of each kind."""
    if request.param == "postgres":
        async with _postgres(request.getfixturevalue("pg_database")) as pg:
            yield pg
        return
    path = ":memory:" if request.param == "sqlite-memory" else str(tmp_path / "reg.sqlite")
    async with aiosqlite.connect(path) as conn:
        await conn.execute("PRAGMA foreign_keys = ON")  # as the backends open it
        reg: Registry = SqliteRegistry(conn, asyncio.Lock())
        await reg.setup()
        yield reg


@pytest.fixture
async def pg_registry(pg_database: str) -> AsyncIterator[PostgresRegistry]:
    """A PostgreSQL registry, set up, on the test's own database (for its own ways)."""
    async with _postgres(pg_database) as pg:
        yield pg


@pytest.fixture
async def sqlite_registry(tmp_path: Path) -> AsyncIterator[SqliteRegistry]:
    """A SQLite registry, set up, in `tmp_path / "reg.sqlite"` (for SQLite's own ways)."""
    async with aiosqlite.connect(tmp_path / "reg.sqlite") as conn:
        reg = SqliteRegistry(conn, asyncio.Lock())
        await reg.setup()
        yield reg
