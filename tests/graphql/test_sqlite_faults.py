"""What a client of a real server on a SQLite file sees when the file is at fault: a
clear code (UNAVAILABLE with retryAfter), never INTERNAL, and one log line, no
traceback. The faults are made on the file itself, as a disk or an operator would."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import cast

import pytest

from code_hero.persistence.registry import SqliteRegistry
from tests.graphql.clients import TIMEOUT, codes, data, eventually, gql, until_finished
from tests.graphql.conftest import Starter

START = 'mutation { startRun(input: {threadId: "t-1", message: "hi", wait: true}) { status } }'
RUNS = '{ thread(id: "t-1") { id runs { edges { node { id status } } } } }'


def _damage_table(path: Path, table: str) -> None:
    """Overwrite the root page of `table` with bytes SQLite cannot read as a page."""
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
    with open(path, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xff" * page_size)
        file.flush()
        os.fsync(file.fileno())


async def test_damaged_table_is_unavailable_not_internal(
    start: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with start() as srv:
        assert data(await gql(srv.http, START))["startRun"]["status"] == "SUCCESS"
    _damage_table(tmp_path / "app.sqlite", "code_hero_runs")

    caplog.set_level(logging.WARNING)
    async with start() as srv:
        body = await gql(srv.http, RUNS)
        assert codes(body) == ["UNAVAILABLE"], body
        error = body["errors"][0]
        assert error["extensions"]["retryAfter"] >= 1
        assert "damaged" in error["message"] and "restore" in error["message"]
        assert "malformed" not in error["message"]  # SQLite's words go to the log
    graphql_records = [r for r in caplog.records if r.name == "code_hero.graphql"]
    assert graphql_records, "the damage is logged"
    assert all(r.exc_info is None for r in graphql_records), "no traceback"
    assert all(r.levelno == logging.WARNING for r in graphql_records)
    assert any("malformed" in r.getMessage() for r in graphql_records)


SLOW_RUN = """mutation { startRun(input: {graph: "slow", message: "hi",
  config: {delay: 1}}) { id } }"""  # long enough to be mid-run when the lock is taken


async def test_run_that_meets_a_held_lock_resumes_rather_than_failing(
    start: Starter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Another process (a backup, the sqlite3 shell) holds the file's write lock past
    # the busy timeout while a run writes: no fault of the run. Recorded ERROR it
    # would end for good; released, it resumes from its last checkpoint.
    caplog.set_level(logging.INFO, logger="code_hero.runs")
    async with start() as srv:
        backend = srv.gateway.manager.router.primary.backend
        assert backend is not None
        conn = cast(SqliteRegistry, backend.registry).conn
        await conn.execute("PRAGMA busy_timeout = 100")  # not 5 s in a test
        run_id = data(await gql(srv.http, SLOW_RUN))["startRun"]["id"]
        # Executing before the lock is taken: a run still waiting for its claim would
        # not meet it (the claim loop would, and retry once it is free).
        status = "query($id: ID!) { run(id: $id) { status } }"
        async with asyncio.timeout(TIMEOUT):
            while True:
                if data(await gql(srv.http, status, {"id": run_id}))["run"]["status"] != "PENDING":
                    break
                await asyncio.sleep(0.02)
        other = sqlite3.connect(
            tmp_path / "app.sqlite", isolation_level=None, check_same_thread=False
        )
        try:
            # Off the loop: the server's transaction in flight commits meanwhile.
            await asyncio.to_thread(other.execute, "BEGIN EXCLUSIVE")

            def stopped() -> bool:
                return any(
                    run_id in r.getMessage() and r.name == "code_hero.runs.executor"
                    for r in caplog.records
                )

            await eventually(stopped)  # its write met the lock
            other.execute("ROLLBACK")
        finally:
            other.close()
        run = await until_finished(srv.http, run_id, seconds=30)
        assert run["status"] == "SUCCESS", run
        assert not [r for r in caplog.records if r.exc_info], "no traceback"
