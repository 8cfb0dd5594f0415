"""Bad configuration and database faults: a clear reason, the fallback takes over."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

from code_hero.checkpointing import (
    CheckpointerConfig,
    EnhancedCheckpointerManager,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)
from code_hero.errors import ConfigurationError
from tests.conftest import PG_ADMIN_URL
from tests.graphs import build_graph


async def _degraded_manager(config: CheckpointerConfig) -> EnhancedCheckpointerManager:
    manager = EnhancedCheckpointerManager(config)
    assert await manager.initialize() is False
    return manager


async def _assert_runs_on_fallback(manager: EnhancedCheckpointerManager, reason: str) -> None:
    health = await manager.health_check()
    assert health["overall_status"] == "degraded"
    assert health["active_backend"] == "fallback"
    primary = health["primary_checkpointer"]
    assert not primary["healthy"] and not primary["active"]
    assert reason in primary["last_error"].lower()
    assert health["fallback_checkpointer"]["active"]
    assert manager.health_status["primary_healthy"] is False
    graph = build_graph().compile(checkpointer=manager.get_checkpointer())
    config = manager.create_thread_config("t")
    result = await graph.ainvoke({"messages": [HumanMessage("hi")]}, config)
    assert result["steps"] == ["n0", "n1", "n2"]
    assert (await manager.get_checkpoint("t")) is not None


def test_unknown_type_fails_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="unknown checkpointer type 'mongodb'"):
        CheckpointerConfig(checkpointer_type="mongodb")
    with pytest.raises(ConfigurationError, match="connection_string"):
        CheckpointerConfig(checkpointer_type="postgres")


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can create files in (root included: the immutable attribute)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["chattr", "+i", str(locked)], check=True)
    else:
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        yield locked
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        else:
            locked.chmod(stat.S_IRWXU)


async def test_unwritable_sqlite_directory_falls_back(unwritable_dir: Path) -> None:
    manager = await _degraded_manager(create_sqlite_checkpointer(str(unwritable_dir / "db.sqlite")))
    try:
        await _assert_runs_on_fallback(manager, "unable to open database file")
    finally:
        await manager.cleanup()


async def test_sqlite_path_that_is_a_directory_falls_back(tmp_path: Path) -> None:
    # Runs as root too: a directory cannot be opened as a database file.
    manager = await _degraded_manager(create_sqlite_checkpointer(str(tmp_path)))
    try:
        await _assert_runs_on_fallback(manager, "unable to open database file")
    finally:
        await manager.cleanup()


async def test_sqlite_under_a_file_falls_back(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    manager = await _degraded_manager(create_sqlite_checkpointer(str(blocker / "db.sqlite")))
    try:
        await _assert_runs_on_fallback(manager, "not a directory")
    finally:
        await manager.cleanup()


@pytest.mark.postgres
async def test_unknown_database_falls_back() -> None:
    url = PG_ADMIN_URL.rpartition("/")[0] + "/no_such_database_here"
    manager = await _degraded_manager(create_postgres_checkpointer(url, pool_timeout=2))
    try:
        await _assert_runs_on_fallback(manager, 'database "no_such_database_here" does not exist')
    finally:
        await manager.cleanup()


async def test_refused_connection_falls_back() -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"
    manager = await _degraded_manager(create_postgres_checkpointer(url, pool_timeout=2))
    try:
        await _assert_runs_on_fallback(manager, "connection refused")
        assert (
            "127.0.0.1:1" in (await manager.health_check())["primary_checkpointer"]["description"]
        )
    finally:
        await manager.cleanup()


async def test_password_is_never_reported(tmp_path: Path) -> None:
    url = "postgresql://postgres:s3cret@127.0.0.1:1/test"
    manager = await _degraded_manager(create_postgres_checkpointer(url, pool_timeout=2))
    try:
        health = await manager.health_check()
        assert "s3cret" not in repr(health)
    finally:
        await manager.cleanup()


async def test_no_fallback_means_no_checkpoints_but_runs_go_on() -> None:
    config = create_postgres_checkpointer(
        "postgresql://postgres@127.0.0.1:1/test", pool_timeout=1, enable_fallback=False
    )
    manager = await _degraded_manager(config)
    try:
        assert (await manager.health_check())["overall_status"] == "unhealthy"
        graph = build_graph().compile(checkpointer=manager.get_checkpointer())
        result = await graph.ainvoke({"messages": []}, manager.create_thread_config("t"))
        assert result["steps"] == ["n0", "n1", "n2"]
        assert await manager.get_checkpoint("t") is None
    finally:
        await manager.cleanup()
