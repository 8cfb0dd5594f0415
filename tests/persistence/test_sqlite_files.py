"""The SQLite file deleted, replaced, or made read-only under a manager that has it
open: the next probe sees it, writes go to the fallback, nothing written is lost,
and the primary serves again at its path without a restart (persistence.sqlitefiles)."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.checkpointing import EnhancedCheckpointerManager
from code_hero.config import CheckpointerConfig, create_sqlite_checkpointer
from code_hero.persistence.backends import open_backend
from code_hero.persistence.registry import SqliteRegistry
from tests.persistence.test_down_means_down import _manager


def _config(path: Path) -> CheckpointerConfig:
    # No background probe: each test decides when the router checks and heals.
    return create_sqlite_checkpointer(str(path), health_check_interval=3600)


async def _write(manager: EnhancedCheckpointerManager, thread_id: str) -> None:
    config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    metadata: Any = {"source": "input", "step": -1, "parents": {}}
    await manager.get_checkpointer().aput(config, empty_checkpoint(), metadata, {})


def _stored(path: Path | str) -> dict[str, int]:
    """Checkpoints per thread in the file at `path`, read with a connection of our own."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT thread_id, count(*) FROM checkpoints GROUP BY 1").fetchall()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return {str(t): int(n) for t, n in rows}


def _side_files(path: Path) -> list[str]:
    """The WAL and index files beside the database at `path`."""
    return [s for s in ("-wal", "-shm") if os.path.exists(f"{path}{s}")]


def _orphans(folder: Path) -> list[Path]:
    """The copies of replaced databases kept in `folder`."""
    return list(folder.glob("db.sqlite.orphaned-*"))


async def _moved_then_healed(manager: EnhancedCheckpointerManager) -> str:
    """Probe: the primary is down for the moved file; probe again: it serves."""
    report = await manager.health_check()
    assert report["overall_status"] == "degraded"
    error = str(manager.router.primary.last_error)
    assert "deleted or replaced" in error
    await _write(manager, "during")  # on the fallback
    assert manager.router.pending_sync > 0
    assert (await manager.health_check())["overall_status"] == "healthy"
    assert manager.router.pending_sync == 0
    await _write(manager, "after")
    return error


async def test_deleted_file_is_written_back_and_served_again(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with _manager(_config(path)) as manager:
        await _write(manager, "before")
        path.unlink()
        await _moved_then_healed(manager)
        assert _stored(path) == {"before": 1, "during": 1, "after": 1}


async def test_folder_gone_keeps_the_connection_until_it_is_back(tmp_path: Path) -> None:
    # An unmounted disk: the file cannot be written back, and the open connection is
    # the only way left to what it holds. Closed and opened afresh at the path, the
    # database would be a new, empty one (its folder made anew).
    folder = tmp_path / "data"
    path = folder / "db.sqlite"
    async with _manager(_config(path)) as manager:
        await _write(manager, "before")
        folder.rename(tmp_path / "unmounted")
        for _ in range(2):
            assert (await manager.health_check())["overall_status"] == "degraded"
            assert not folder.exists()
        await _write(manager, "during")
        (tmp_path / "unmounted").rename(folder)  # mounted again
        assert (await manager.health_check())["overall_status"] == "healthy"
        await _write(manager, "after")
        assert _stored(path) == {"before": 1, "during": 1, "after": 1}


async def test_deleted_wal_is_checkpointed_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    async with _manager(_config(path)) as manager:
        await _write(manager, "before")
        os.unlink(f"{path}-wal")
        os.unlink(f"{path}-shm")
        await _moved_then_healed(manager)
        assert _stored(path) == {"before": 1, "during": 1, "after": 1}


def _made_anew(path: Path) -> None:
    """Open `path` in another process as the sqlite3 shell or a CLI command would,
    which makes a new database there when the file is gone."""
    code = "import sqlite3, sys; sqlite3.connect(sys.argv[1]).execute('CREATE TABLE x (a)')"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)


async def test_a_new_file_at_a_deleted_ones_path_is_not_served_nor_its_data_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Deleted, then something opens the path before the next probe: a new, empty file.
    # Taken for a restore, it was served, and all the data was only in an orphan copy.
    path = tmp_path / "db.sqlite"
    caplog.set_level(logging.WARNING, logger="code_hero.persistence")
    async with _manager(_config(path)) as manager:
        await _write(manager, "before")
        path.unlink()
        _made_anew(path)
        for _ in range(3):
            assert (await manager.health_check())["overall_status"] == "degraded"
        told = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(told) == 1 and "another file is at its path" in told[0], told
        with contextlib.closing(sqlite3.connect(path)) as conn:  # left as it was made
            assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("x",)]
        await _write(manager, "during")  # on the fallback
        path.rename(tmp_path / "newcomer.sqlite")  # as the ERROR line says
        await manager.health_check()  # written back
        assert (await manager.health_check())["overall_status"] == "healthy"  # opened
        assert _stored(path) == {"before": 1, "during": 1}
    assert not _orphans(tmp_path)


async def test_a_restore_under_a_running_server_is_served_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    async with _manager(_config(path)) as manager:
        await _write(manager, "restored")
        with contextlib.closing(sqlite3.connect(path)) as conn:  # a backup of it, as it is
            conn.execute(f"VACUUM INTO '{tmp_path / 'backup.sqlite'}'")
        await _write(manager, "lost-by-restore")
        os.replace(tmp_path / "backup.sqlite", path)
        for _ in range(2):  # not served: it may as well be a new empty file
            assert (await manager.health_check())["overall_status"] == "degraded"
        assert _side_files(path) == []  # the old WAL, not to be replayed into it
    async with _manager(_config(path)) as manager:  # restarted: the restore serves
        assert manager.overall_status == "healthy"
        await _write(manager, "after")
    assert _stored(path) == {"restored": 1, "after": 1}
    (orphan,) = _orphans(tmp_path)  # what the server had open, saved as it stopped
    assert _stored(orphan) == {"restored": 1, "lost-by-restore": 1}


# Another process with the file open (a CLI command beside the server): each line on
# its standard input writes a checkpoint row of that thread, and it answers "ok".
NEIGHBOUR = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("SELECT count(*) FROM checkpoints").fetchone()
    print("ok", flush=True)
    for line in sys.stdin:
        conn.execute(
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id) VALUES (?, '', ?)",
            (line.strip(), line.strip()),
        )
        print("ok", flush=True)
    conn.close()
    """
)


# A process opening the path of a deleted database (a second server, a CLI command):
# it makes a new file in WAL mode, a table of its own, a row per line it reads.
NEWCOMER = textwrap.dedent(
    """
    import sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS x (v TEXT)")
    print("ok", flush=True)
    for line in sys.stdin:
        conn.execute("INSERT INTO x VALUES (?)", (line.strip(),))
        print("ok", flush=True)
    conn.close()
    """
)


@contextlib.contextmanager
def _neighbour(path: Path, script: str = NEIGHBOUR) -> Iterator[Callable[[str], None]]:
    """Another process that has `path` open while the block runs; yields its writer."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout = child.stdin, child.stdout

    def write(thread_id: str) -> None:
        stdin.write(thread_id + "\n")
        stdin.flush()
        assert stdout.readline().strip() == "ok"

    try:
        assert stdout.readline().strip() == "ok"  # open
        yield write
    finally:
        stdin.close()
        assert child.wait(timeout=60) == 0
        stdout.close()


async def _degraded_while_shared(
    manager: EnhancedCheckpointerManager, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        assert (await manager.health_check())["overall_status"] == "degraded"
    told = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(told) == 1 and "another process has the old files open" in told[0], told


async def test_a_deleted_file_another_process_uses_is_written_back_once_it_is_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Written back at once, the file at the path would miss what the other process
    # writes after into the deleted one (acknowledged to its caller).
    path = tmp_path / "db.sqlite"
    caplog.set_level(logging.WARNING, logger="code_hero.persistence")
    async with _manager(_config(path)) as manager:
        await _write(manager, "before")
        with _neighbour(path) as other_writes:
            path.unlink()
            await _degraded_while_shared(manager, caplog)
            other_writes("other")
        await manager.health_check()  # alone: written back
        assert (await manager.health_check())["overall_status"] == "healthy"
        assert _stored(path) == {"before": 1, "other": 1}


async def test_a_deleted_wal_another_process_uses_is_checkpointed_once_it_is_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Reopened at once with a new WAL, the server and the other process would write
    # one database through two WALs.
    path = tmp_path / "db.sqlite"
    caplog.set_level(logging.WARNING, logger="code_hero.persistence")
    async with _manager(_config(path)) as manager:
        await _write(manager, "before")
        with _neighbour(path) as other_writes:
            os.unlink(f"{path}-wal")
            os.unlink(f"{path}-shm")
            await _degraded_while_shared(manager, caplog)
            other_writes("other")
        await manager.health_check()  # alone: checkpointed
        assert (await manager.health_check())["overall_status"] == "healthy"
        await _write(manager, "after")
    assert _stored(path) == {"before": 1, "other": 1, "after": 1}


async def test_two_managers_of_one_process_on_a_deleted_file_wait_for_each_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite's locks do not show a process its own: one manager writing back while the
    # other writes on into the deleted file would leave those writes in neither.
    path = tmp_path / "db.sqlite"
    caplog.set_level(logging.WARNING, logger="code_hero.persistence")
    async with _manager(_config(path)) as b:
        async with _manager(_config(path)) as a:
            await _write(a, "a")
            path.unlink()
            await _degraded_while_shared(a, caplog)
            await _write(b, "b")  # b has not probed: into the deleted file, acknowledged
        # a stopped: its copy is saved beside the path, which b's write-back takes
        await b.health_check()
        assert (await b.health_check())["overall_status"] == "healthy"
        assert _stored(path) == {"a": 1, "b": 1}
    (orphan,) = _orphans(tmp_path)
    assert _stored(orphan) == {"a": 1, "b": 1}


# A read-only file: root reads and writes any file, so the scenario runs in a child
# without the capabilities that let it (setpriv), or as is for another user.
READ_ONLY = textwrap.dedent(
    """
    import asyncio, json, os, sys
    from code_hero.checkpointing import EnhancedCheckpointerManager
    from tests.persistence.test_sqlite_files import _config, _stored, _write

    async def main(path):
        os.chmod(path, 0o444)
        manager = EnhancedCheckpointerManager(_config(path))
        await manager.initialize()
        try:
            first = manager.overall_status
            await _write(manager, "while-read-only")
            for name in (path, path + "-wal", path + "-shm"):  # as SQLite made them: 0o444
                if os.path.exists(name):
                    os.chmod(name, 0o644)
            healed = (await manager.health_check())["overall_status"]
        finally:
            await manager.cleanup()
        print(json.dumps([first, healed, _stored(path)]))

    asyncio.run(main(sys.argv[1]))
    """
)


SET_UP = textwrap.dedent(
    """
    import asyncio, sys
    from tests.persistence.test_sqlite_files import _config, _manager

    async def main(path):
        async with _manager(_config(path)):
            pass

    asyncio.run(main(sys.argv[1]))
    """
)
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def test_read_only_file_at_start_is_down_and_heals_when_writable(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    subprocess.run(  # a database set up as a server leaves it
        [sys.executable, "-c", SET_UP, str(path)], check=True, env=_env(), cwd=ROOT, timeout=60
    )
    command = [sys.executable, "-c", READ_ONLY, str(path)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root ignores file permissions and setpriv is missing")
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner", *command]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    first, healed, stored = json.loads(done.stdout.strip().splitlines()[-1])
    # Read-only from the start: down, not a primary whose every write fails.
    assert first == "degraded"
    assert healed == "healthy"
    assert stored == {"while-read-only": 1}  # held by the fallback, copied in once writable


async def test_full_file_logs_its_outage_once_not_per_probe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # max_page_count makes the file "full" as a full disk would: SQLITE_FULL. A probe
    # (a read) answers, the copy-back (writes) stops: three probes, no new lines.
    path = tmp_path / "db.sqlite"
    async with _manager(_config(path)) as manager:
        await _write(manager, "before")
        backend = manager.router.primary.backend
        assert backend is not None
        conn = cast(SqliteRegistry, backend.registry).conn
        pages = _page_count(path)
        await conn.execute(f"PRAGMA max_page_count = {pages}")
        written = 0
        while manager.router.active == 0:
            assert written < 200, "the file never filled up"
            await _write(manager, f"full-{written}")
            written += 1
        caplog.set_level(logging.DEBUG, logger="code_hero.persistence")
        caplog.clear()
        for _ in range(3):
            assert (await manager.health_check())["overall_status"] == "degraded"
        told = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert sum("sync back to the primary stopped" in m for m in told) == 1, told
        assert sum("answers again" in m for m in told) <= 1, told
        await conn.execute("PRAGMA max_page_count = 1073741823")
        assert (await manager.health_check())["overall_status"] == "healthy"


def _page_count(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA page_count").fetchone()[0])


async def test_a_new_file_a_process_opened_at_a_deleted_ones_path_keeps_its_writes(
    tmp_path: Path,
) -> None:
    # The newcomer, opening the path in WAL mode, took the -wal and -shm it found there:
    # the deleted database's. Unlinked at the rescue as the server's own, the newcomer's
    # acknowledged writes were lost and its file left damaged.
    import aiosqlite

    from code_hero.persistence.sqlitefiles import DatabaseFileTaken, SqliteFiles

    path = tmp_path / "db.sqlite"
    conn = await aiosqlite.connect(path)
    try:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("CREATE TABLE ours (v TEXT)")
        await conn.execute("INSERT INTO ours VALUES ('gateway')")
        await conn.commit()
        files = SqliteFiles(str(path))
        files.record()
        path.unlink()
        with _neighbour(path, NEWCOMER) as newcomer_writes:
            newcomer_writes("one")
            with pytest.raises(DatabaseFileTaken):
                await files.rescue(conn)
            newcomer_writes("two")
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as third:
                third.execute("INSERT INTO x VALUES ('three')")
            newcomer_writes("four")
        with contextlib.closing(sqlite3.connect(path)) as other:
            assert other.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = sorted(v for (v,) in other.execute("SELECT v FROM x"))
        assert rows == ["four", "one", "three", "two"]
    finally:
        await conn.close()
        files.forget()


async def test_giving_the_space_back_leaves_no_statement_in_progress(tmp_path: Path) -> None:
    # Found by the outage audit (a real `serve`, two outages in a row): after a switch
    # back, the durable fallback's `PRAGMA wal_checkpoint(TRUNCATE)` was left to an
    # aiosqlite cursor nothing closed, kept alive until the cyclic collector ran (serve
    # runs it a tenth as often as Python would). The statement stayed in progress, and the
    # next outage's writes to the fallback failed to commit ("cannot commit transaction -
    # SQL statements in progress"), taken for a lock: runs in flight were released and
    # stood still until the database was back. The collector is off here, as between its
    # passes.
    config = create_sqlite_checkpointer(
        str(tmp_path / "fallback.sqlite"), health_check_interval=3600
    )
    gc.disable()
    try:
        async with open_backend(config) as backend:
            await backend.give_back_space()
            thread = {"configurable": {"thread_id": "t", "checkpoint_ns": ""}}
            await backend.saver.aput(thread, empty_checkpoint(), {}, {})
            assert await backend.saver.aget_tuple(thread) is not None
    finally:
        gc.enable()
