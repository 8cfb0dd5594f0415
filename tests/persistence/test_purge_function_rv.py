"""Review of caa55f3: the deletion's function missing is an outage and is made again."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import psycopg
import pytest

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.persistence.fallback_state import PrimaryUnreachableError
from code_hero.persistence.migrations import PURGE_THREAD_SIGNATURE
from tests.persistence.test_down_means_down import _manager, _stored, _writer

pytestmark = pytest.mark.postgres


async def test_the_function_made_again_alone_says_no_data_is_gone(
    pg_database: str, caplog: Any
) -> None:
    """Only the function was dropped (every table and row stay): the probe makes it
    again and logs the tables' WARNING, "had lost tables of ours
    (code_hero_purge_thread()): made them again; what they held is gone". Nothing was
    gone: an operator reading it looks for lost data (or restores a backup) for
    nothing."""
    config = create_postgres_checkpointer(pg_database, health_check_interval=3600)
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("kept")
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(f"DROP FUNCTION {PURGE_THREAD_SIGNATURE}".encode())
        with contextlib.suppress(PrimaryUnreachableError):
            await manager.purge_idle_thread("kept-not")
        caplog.set_level(logging.WARNING)
        caplog.clear()
        assert (await manager.health_check())["overall_status"] == "healthy"
        assert _stored(config, "kept") == 1  # nothing was lost
    lines = [r.getMessage() for r in caplog.records if "made them again" in r.getMessage()]
    assert lines, [r.getMessage() for r in caplog.records]
    assert not any("is gone" in line for line in lines), lines
