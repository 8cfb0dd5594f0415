"""A call that lost a race for a database lock reaches its client as CONFLICT or
UNAVAILABLE with retryAfter, never INTERNAL: the errors come from the real databases."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import psycopg
import pytest
from graphql import GraphQLError

from code_hero.schema.build import build_schema
from code_hero.schema.errors import client_error, error_code


def _as_field_error(exc: BaseException) -> GraphQLError:
    """The error as graphql-core hands a resolver's exception to the gateway."""
    return GraphQLError(str(exc), path=["deleteThread"], original_error=exc)


async def _deadlock(url: str) -> psycopg.Error:
    """A real deadlock: two transactions lock two rows in opposite orders."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as setup:
        await setup.execute("CREATE TABLE clash (id int PRIMARY KEY)")
        await setup.execute("INSERT INTO clash VALUES (1), (2)")
    a = await psycopg.AsyncConnection.connect(url)
    b = await psycopg.AsyncConnection.connect(url)
    try:
        await a.execute("SELECT 1 FROM clash WHERE id = 1 FOR UPDATE")
        await b.execute("SELECT 1 FROM clash WHERE id = 2 FOR UPDATE")
        crossed = await asyncio.gather(
            a.execute("SELECT 1 FROM clash WHERE id = 2 FOR UPDATE"),
            b.execute("SELECT 1 FROM clash WHERE id = 1 FOR UPDATE"),
            return_exceptions=True,
        )
    finally:
        await a.close()
        await b.close()
    victims = [r for r in crossed if isinstance(r, psycopg.Error)]
    assert len(victims) == 1
    return victims[0]


async def test_deadlock_is_conflict_with_retry_after(pg_database: str) -> None:
    exc = await _deadlock(pg_database)
    assert isinstance(exc, psycopg.errors.DeadlockDetected)
    error = client_error(_as_field_error(exc))
    assert error.extensions == {"retryAfter": 1, "code": "CONFLICT"}
    assert "retry" in error.message
    assert "Process" not in error.message  # the database's account stays in the log


async def test_lock_timeout_is_unavailable_busy(pg_database: str) -> None:
    async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as setup:
        await setup.execute("CREATE TABLE held (id int PRIMARY KEY)")
        await setup.execute("INSERT INTO held VALUES (1)")
    async with (
        await psycopg.AsyncConnection.connect(pg_database) as holder,
        await psycopg.AsyncConnection.connect(pg_database) as waiter,
    ):
        await holder.execute("SELECT 1 FROM held WHERE id = 1 FOR UPDATE")
        await waiter.execute("SET lock_timeout = '50ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable) as caught:
            await waiter.execute("SELECT 1 FROM held WHERE id = 1 FOR UPDATE")
    error = client_error(_as_field_error(caught.value))
    assert error.extensions == {"retryAfter": 1, "code": "UNAVAILABLE"}
    assert "busy" in error.message


async def test_statement_timeout_is_unavailable_with_retry_after(pg_database: str) -> None:
    # statement_timeout set on the database, a statement stuck behind another
    # session's lock: the database cancels it (57014), and it serves on.
    async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as setup:
        await setup.execute("CREATE TABLE held (id int PRIMARY KEY)")
        await setup.execute(f'ALTER DATABASE "{setup.info.dbname}" SET statement_timeout = 50')
    async with (
        await psycopg.AsyncConnection.connect(pg_database) as holder,
        await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as waiter,
    ):
        await holder.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(psycopg.errors.QueryCanceled) as caught:
            await waiter.execute("SELECT count(*) FROM held")
    error = client_error(_as_field_error(caught.value))
    assert error.extensions == {"retryAfter": 1, "code": "UNAVAILABLE"}
    assert "statement_timeout" in error.message


def test_sqlite_file_locked_by_another_writer_is_unavailable_busy(tmp_path: Path) -> None:
    path = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    waiter = sqlite3.connect(path, isolation_level=None, timeout=0.05)
    try:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as caught:
            waiter.execute("BEGIN IMMEDIATE")
    finally:
        holder.close()
        waiter.close()
    error = client_error(_as_field_error(caught.value))
    assert error.extensions == {"retryAfter": 1, "code": "UNAVAILABLE"}


def test_other_database_errors_stay_internal(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.sqlite")
    with pytest.raises(sqlite3.OperationalError) as caught:
        conn.execute("SELECT * FROM no_such_table")
    conn.close()
    assert error_code(_as_field_error(caught.value)) == "INTERNAL"
    assert client_error(_as_field_error(caught.value)).message == "Internal server error"


def test_requests_meeting_one_held_lock_warn_once_not_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A lock held for a minute fails every request that needs it alike: 300 requests
    # made 300 WARNING lines. One says so, counting the others at DEBUG; another kind
    # (a damaged file) still warns.
    schema = build_schema()
    busy = psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")
    damaged = sqlite3.DatabaseError("database disk image is malformed")
    damaged.sqlite_errorcode = sqlite3.SQLITE_CORRUPT  # type: ignore[attr-defined]
    with caplog.at_level(logging.DEBUG, logger="code_hero.graphql"):
        for _ in range(5):
            schema.process_errors([_as_field_error(busy)])
        schema.process_errors([_as_field_error(damaged)])
    told = [r for r in caplog.records if r.name == "code_hero.graphql"]
    warned = [r.getMessage() for r in told if r.levelno == logging.WARNING]
    assert warned == [
        "request error: canceling statement due to lock timeout",
        "request error: database disk image is malformed",
    ]
    assert sum(r.levelno == logging.DEBUG for r in told) == 4
