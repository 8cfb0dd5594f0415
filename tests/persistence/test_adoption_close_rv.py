"""Review of 33890cc/9354ec9: `OutageFile.close` may raise (after releasing its own file
now); what `Adoptions.close`, and the manager's cleanup after it, do with that raise."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.persistence.adoption import Adoptions, _router_for
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.outagefile import OutageFile, _flock, _lock_file

DB = "postgresql://db.here/mine"


def _free(store_path: Path) -> bool:
    fd = _flock(_lock_file(store_path.with_name(store_path.name + ".entries")))
    if fd is None:
        return False
    os.close(fd)
    return True


def test_one_adopted_files_failed_close_releases_the_others(tmp_path: Path) -> None:
    """Two adopted files; the first one's close fails (its checkpoints' WAL cannot be
    checkpointed: a disk error). 33890cc made that file's lock go anyway, for "a lock
    kept by a failed close would keep the file from every other server until this
    process ends"; but `Adoptions.close` stops at the raise: the second file is never
    closed, its lock kept until the process ends (and the manager's cleanup, which
    awaits `adoptions.close()` first, never closes its own router either)."""
    config = create_postgres_checkpointer(DB, fallback_path=str(tmp_path / "fb.sqlite"))
    adoptions = Adoptions(config, tmp_path / "fb.sqlite", serving=lambda: True)
    stores = [OutageFile.claim(str(tmp_path / name), DB) for name in ("fb-2.sqlite", "fb-3.sqlite")]
    assert [s.path.name for s in stores] == ["fb-2.sqlite", "fb-3.sqlite"]

    def failing() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    stores[0].checkpoints.close = failing  # type: ignore[method-assign]
    for store in stores:
        adoptions.adopted[store.path] = _router_for(config, store)

    async def scenario() -> None:
        with contextlib.suppress(sqlite3.OperationalError):  # raised or logged: either
            await adoptions.close()

    try:
        asyncio.run(scenario())
    finally:
        freed = [_free(s.path) for s in stores]
        if not freed[1]:
            stores[1].close()
    assert freed == [True, True], freed


@pytest.mark.postgres
async def test_a_failed_adopted_close_leaves_the_servers_own_file_released(
    pg_database: str, tmp_path: Path
) -> None:
    """The same failure at a server's stop: `cleanup` awaits `adoptions.close()` before
    its own router's close, so the raise skips it: the server's own fallback file (and
    its pool) stay held until the process ends."""
    config = create_postgres_checkpointer(
        pg_database, fallback_path=str(tmp_path / "fb.sqlite"), health_check_interval=3600
    )
    manager = EnhancedCheckpointerManager(config)
    assert await manager.initialize()
    adoptions = manager.adoptions
    assert adoptions is not None
    own = manager.router.store
    assert own is not None
    adopted = OutageFile.claim(str(tmp_path / "fb.sqlite"), "postgresql://db.here/other")

    def failing() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    adopted.checkpoints.close = failing  # type: ignore[method-assign]
    adoptions.adopted[adopted.path] = _router_for(config, adopted)
    try:
        with contextlib.suppress(sqlite3.OperationalError):
            await manager.cleanup()
        assert _free(own.path)
    finally:
        if manager._router is not None:
            await manager._router.close()
