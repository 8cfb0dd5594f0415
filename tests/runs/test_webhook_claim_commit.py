"""What a PostgreSQL webhook claim that leases something sends: one statement, no COMMIT."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import _connection_base

from code_hero.config import CheckpointerConfig
from code_hero.persistence import clock
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.records import RunRecord, RunStatus, ThreadRecord, ThreadStatus
from code_hero.persistence.webhooks import RUN_WEBHOOK_KEY
from tests.conftest import make_config


@pytest.fixture
def pg_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    return make_config("postgres", request)


async def test_a_claim_that_leases_a_delivery_sends_no_commit_outside_a_transaction(
    pg_config: CheckpointerConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim leases and reads what it leased in one statement, autocommitted: no
    COMMIT after it with no transaction open (PostgreSQL warns "there is no transaction
    in progress" in its log), and no lease committed before the rows are read (a read
    failed or cancelled then left them leased, attempted by nobody, for the lease)."""
    notices: list[str] = []
    original = _connection_base.BaseConnection._notice_handler

    def handler(wself: Any, res: Any) -> None:
        conn = wself()
        if conn is not None:
            diag = psycopg.errors.Diagnostic(res, conn.pgconn._encoding)
            notices.append(f"{diag.severity}: {diag.message_primary}")
        original(wself, res)

    monkeypatch.setattr(_connection_base.BaseConnection, "_notice_handler", staticmethod(handler))
    async with open_backend(pg_config) as backend:
        await enqueue(backend, "http://127.0.0.1:9/own")
        now = clock.now()
        claim = await backend.registry.claim_deliveries(
            "here", now=now, until=now + backend_lease(), limit=5
        )
        assert len(claim.deliveries) == 1
    assert [n for n in notices if "no transaction" in n] == []


def backend_lease() -> timedelta:
    return timedelta(seconds=25)


async def enqueue(replica: Backend, url: str) -> None:
    """A run ends with its own webhook: one PENDING delivery, due now."""
    now = clock.now()
    await replica.registry.put_thread(ThreadRecord("t", "u", ThreadStatus.IDLE, {}, now, now))
    run = RunRecord(
        "0d6f9e52-3b1c-4a7e-8f21-9c4b5a6d7e80",
        "t",
        "g",
        RunStatus.SUCCESS,
        created_at=now,
        finished_at=now,
        user_id="u",
        config={RUN_WEBHOOK_KEY: url},
    )
    await replica.registry.put_run(run, announce=True)
