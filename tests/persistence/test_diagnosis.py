"""Backend errors as categories: real driver texts in, name-free words out.

Each text is produced here by psycopg or sqlite (as `BackendSlot.record_failure`
stores it: "Type: message"), except where the local server cannot produce it
(it trusts every role: no password is ever refused); those are libpq's exact
messages.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from urllib.parse import urlparse

import aiosqlite
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from code_hero.errors import described
from code_hero.persistence.diagnosis import CATEGORIES, error_category, public_health
from code_hero.persistence.pg_tables import TablesMissing
from tests.conftest import PG_ADMIN_URL
from tests.faults import HungServer, with_port


def stored(exc: BaseException) -> str:
    """The text a backend slot keeps for a failure."""
    return described(exc)


async def pg_error(url: str) -> str:
    with pytest.raises(psycopg.Error) as caught:
        await psycopg.AsyncConnection.connect(url, connect_timeout=5)
    return stored(caught.value)


def url_with(path: str = "", user: str = "") -> str:
    parsed = urlparse(PG_ADMIN_URL)
    netloc = f"{user or parsed.username}@{parsed.hostname}:{parsed.port}"
    return parsed._replace(netloc=netloc, path=path or parsed.path).geturl()


def assert_category(text: str, category: str, *names: str) -> None:
    assert error_category(text) == category, text
    assert category in CATEGORIES
    for name in names:  # the point: the text names them, the category does not
        assert name in text and name not in category


async def test_postgres_texts() -> None:
    refused = await pg_error("postgresql://postgres@127.0.0.1:1/secretdb")
    assert_category(refused, "connection refused", "127.0.0.1")
    missing = await pg_error(url_with(path="/no_such_database_xyz"))
    assert_category(missing, "database does not exist", "no_such_database_xyz")
    no_role = await pg_error(url_with(user="no_such_role_xyz"))
    assert_category(no_role, "authentication failed", "no_such_role_xyz")
    no_host = await pg_error("postgresql://postgres@no-such-host.invalid:5432/x")
    assert_category(no_host, "host not found", "no-such-host.invalid")


async def test_postgres_refusing_sessions_by_setting() -> None:
    # A database that allows no connections, and a role or database at its
    # CONNECTION LIMIT: the server answers and refuses the session.
    suffix = uuid.uuid4().hex[:10]
    name, role = f"ch_closed_{suffix}", f"ch_limited_{suffix}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}".encode())
        admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0".encode())
        try:
            admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false".encode())
            closed = await pg_error(url_with(path=f"/{name}"))
            assert_category(closed, "database not accepting connections", name)
            limited = await pg_error(url_with(user=role))
            assert_category(limited, "too many connections", role)
            admin.execute(
                f"ALTER DATABASE {name} ALLOW_CONNECTIONS true CONNECTION LIMIT 0".encode()
            )
            full = await pg_error(url_with(path=f"/{name}", user=role))
            assert_category(full, "too many connections", role)
        finally:
            admin.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())
            admin.execute(f"DROP ROLE {role}".encode())


async def test_postgres_missing_tables() -> None:
    with psycopg.connect(PG_ADMIN_URL) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("SELECT * FROM code_hero_runs_gone_xyz")
    assert_category(stored(caught.value), "tables missing", "code_hero_runs_gone_xyz")
    gone = TablesMissing(["code_hero_runs", "checkpoints"], repaired=False)
    assert_category(stored(gone), "tables missing", "code_hero_runs")


async def test_timeouts() -> None:
    async with HungServer() as hung:
        url = with_port(PG_ADMIN_URL, hung.port)
        pool = AsyncConnectionPool(url, min_size=0, max_size=1, open=False, timeout=0.5)
        await pool.open()
        try:
            with pytest.raises(psycopg.errors.Error) as caught:
                async with pool.connection():
                    pass
        finally:
            await pool.close()
        assert_category(stored(caught.value), "timeout")  # psycopg-pool's PoolTimeout
    with pytest.raises(TimeoutError) as timed_out:
        async with asyncio.timeout(0):
            await asyncio.sleep(1)
    assert stored(timed_out.value) == "TimeoutError (no message)"  # not a bare colon
    assert_category(stored(timed_out.value), "timeout")
    # The fallback router's own bound (fallback.py).
    assert_category("TimeoutError: opening the primary timed out after 3 s", "timeout")


def test_libpq_texts_the_local_server_cannot_produce() -> None:
    base = 'OperationalError: connection failed: connection to server at "db.internal", port 5432'
    auth = "authentication failed"
    for text, category in (
        (f'{base} failed: FATAL:  password authentication failed for user "app"', auth),
        (f"{base} failed: fe_sendauth: no password supplied", auth),
        (f'{base} failed: FATAL:  no pg_hba.conf entry for host "10.0.0.7", user "app"', auth),
        (f"{base} failed: FATAL:  sorry, too many clients already", "too many connections"),
        (
            f"{base} failed: FATAL:  the database system is shutting down",
            "server starting or stopping",
        ),
        (
            "OperationalError: consuming input failed: server closed the connection "
            "unexpectedly\n\tThis probably means the server terminated abnormally",
            "connection lost",
        ),
    ):
        assert_category(text, category)
        assert "db.internal" not in category


async def test_sqlite_texts(tmp_path: Path) -> None:
    with pytest.raises(Exception) as cannot_open:
        async with aiosqlite.connect(str(tmp_path / "no" / "such" / "dir.sqlite")):
            pass
    assert_category(stored(cannot_open.value), "cannot open database file")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database " * 1000)
    with pytest.raises(Exception) as damaged:
        async with aiosqlite.connect(str(garbage)) as db:
            await db.execute("SELECT * FROM sqlite_master")
    assert_category(stored(damaged.value), "database file is damaged")
    # What sqlite says on a failing disk, full or locked (not made here).
    assert error_category("OperationalError: disk I/O error") == "disk I/O error"
    assert error_category("OperationalError: database or disk is full") == "disk full"
    assert error_category("OperationalError: database is locked") == "database is locked"


def test_unknown_and_none() -> None:
    assert error_category(None) is None and error_category("") is None
    assert error_category('RuntimeError: something about "db.internal"') == "unavailable"


def test_public_health_keeps_no_names() -> None:
    primary = {
        "role": "primary",
        "healthy": False,
        "last_error": 'OperationalError: connection to server at "db.internal" failed: '
        "Connection refused",
        "description": "postgresql://app:***@db.internal:5432/prod",
    }
    report = {"overall_status": "degraded", "backends": [primary], "primary_checkpointer": primary}
    public = public_health(report)
    assert "db.internal" not in repr(public) and "prod" not in repr(public)
    assert public["backends"][0]["last_error"] == "connection refused"
    assert public["primary_checkpointer"]["last_error"] == "connection refused"
    assert report["backends"][0] is primary and "db.internal" in primary["last_error"]
