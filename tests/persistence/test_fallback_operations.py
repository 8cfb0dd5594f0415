"""The durable fallback as an operator meets it from outside (review of durable).

`code-hero health` run beside a server, a server started where it may not write,
replicas that shrink to one after a crash, and the disk an outage leaves behind.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from langgraph.checkpoint.base import empty_checkpoint

from code_hero.config import create_postgres_checkpointer
from code_hero.errors import ConfigurationError
from code_hero.persistence.entries import DeleteThread
from code_hero.persistence.journal import Journal
from code_hero.persistence.manager import EnhancedCheckpointerManager
from code_hero.persistence.outagefile import OutageFile
from tests.persistence.test_pg_disk_full import _free_port
from tests.replicas.test_durable_fallback import OwnPostgres, own_cluster, own_pg
from tests.test_cli import COMMAND, _env, cli

__all__ = ["own_cluster", "own_pg"]  # the fixtures, used by name below

DOWN = "postgresql://nobody@127.0.0.1:1/none"
SOURCE = str(Path(__file__).resolve().parents[2] / "src")


def test_health_never_takes_or_resumes_the_fallback_file(tmp_path: Path) -> None:
    # A probe (an exec liveness check beside the server) must not take the server's
    # file, nor a -2 of its own, nor copy back what a dead server left there.
    cli("health", "--database-url", DOWN, cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_serve_where_it_may_not_write_says_what_to_set_without_a_traceback() -> None:
    # A systemd unit (working directory /) or readOnlyRootFilesystem: the default file
    # is relative to a directory the server cannot write.
    base = Path(tempfile.mkdtemp(prefix="code-hero-ro-"))
    base.chmod(0o755)
    readonly = base / "ro"
    readonly.mkdir(mode=0o555)
    readonly.chmod(0o555)
    mounted = False
    if os.geteuid() == 0:  # root writes anywhere it may: a read-only filesystem instead
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(readonly)])
        if done.returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs")
        mounted = True
    env = {**_env(), "PYTHONPATH": SOURCE, "DATABASE_URL": DOWN, "HOME": str(base)}
    port = str(_free_port())
    try:
        with subprocess.Popen(
            [*COMMAND, "serve", "--port", port],
            cwd=readonly,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as server:
            assert server.stdout is not None
            lines: list[str] = []
            try:
                for line in server.stdout:
                    lines.append(line)
                    if "Application startup complete" in line:
                        break
            finally:
                server.kill()
                server.wait()
        output = "".join(lines)
        assert "Traceback" not in output, output
        assert "CODE_HERO_FALLBACK_PATH" in output, output
    finally:
        if mounted:
            subprocess.run(["umount", str(readonly)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_a_lone_restart_resumes_what_a_dead_second_replica_left(tmp_path: Path) -> None:
    # Two replicas share a working directory (compose --scale, systemd template units);
    # both die during an outage (a node reboot), one comes back.
    path = str(tmp_path / "fb.sqlite")
    first = OutageFile.claim(path, "postgresql://db")
    second = OutageFile.claim(path, "postgresql://db")
    journal = Journal(100)
    journal.attach(second, {})
    journal.append(DeleteThread("acknowledged-by-replica-2"))
    second.close()
    first.close()
    restarted = OutageFile.claim(path, "postgresql://db")
    try:
        assert not restarted.load().empty, (
            f"took {restarted.data_path}; the writes wait unseen in {tmp_path / 'fb-2.sqlite'}"
        )
    finally:
        restarted.close()


def _sizes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


async def _outage_then_copy_back(
    pg: OwnPostgres,
    folder: Path,
    written: int,
    then: Callable[[EnhancedCheckpointerManager], Awaitable[None]] | None = None,
) -> None:
    config = create_postgres_checkpointer(
        pg.url, fallback_path=str(folder / "fb.sqlite"), health_check_interval=0.2
    )
    async with EnhancedCheckpointerManager(config) as manager:
        saver = manager.get_checkpointer()
        pg.stop()
        while manager.overall_status == "healthy":
            await manager.probe_health()
            await asyncio.sleep(0.1)
        blob = os.urandom(written // 80).hex()  # 40 checkpoints of written/40 characters
        for t in range(8):
            config_t: Any = {"configurable": {"thread_id": f"t{t}", "checkpoint_ns": ""}}
            for i in range(5):
                checkpoint = empty_checkpoint()
                checkpoint["channel_values"] = {"x": blob}
                checkpoint["channel_versions"] = {"x": str(i + 1)}
                config_t = await saver.aput(config_t, checkpoint, {"step": i}, {"x": str(i + 1)})
        assert manager.pending_sync > 0
        pg.start()
        deadline = time.monotonic() + 120
        while manager.overall_status != "healthy" or manager.pending_sync:
            assert time.monotonic() < deadline, "the copy-back did not end"
            await manager.probe_health()
            await asyncio.sleep(0.2)
        if then is not None:
            await then(manager)


@pytest.mark.postgres
def test_the_files_give_the_outage_s_disk_back_after_the_copy_back(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    written = 40_000_000
    asyncio.run(_outage_then_copy_back(own_pg, tmp_path, written))
    left = _sizes(tmp_path)
    # Emptied, the README says: not 2x the outage's data kept for good.
    assert left < written // 10, {p.name: p.stat().st_size for p in tmp_path.iterdir()}


def test_a_journal_file_others_can_write_is_never_loaded(tmp_path: Path) -> None:
    # Its entries are pickles: a file another user may write (a default path in a shared
    # working directory, a file made beforehand) is code run by the server at start.
    path = tmp_path / "fb.sqlite"
    OutageFile.claim(str(path), "postgresql://db").close()
    journal = path.with_name("fb.sqlite.entries")
    journal.chmod(0o666)
    try:
        taken = OutageFile.claim(str(path), "postgresql://db")
    except ConfigurationError as refused:
        assert "fb.sqlite" in str(refused)
        return
    taken.close()
    assert taken.data_path != str(path), "loaded a journal anyone may write"


@pytest.mark.postgres
def test_a_full_fallback_disk_is_not_blamed_on_the_primary_at_the_copy_back(
    own_pg: OwnPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The fallback's filesystem fills during the outage (README: the journal goes on in
    # memory with one ERROR). PostgreSQL back, the copy-back must not fail the healthy
    # primary over and over on the fallback file's "database or disk is full".
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a tmpfs")
    try:
        with caplog.at_level("WARNING"):
            asyncio.run(_outage_then_copy_back(own_pg, small, 8_000_000))
    finally:
        subprocess.run(["umount", str(small)], check=False)
    blamed = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("primary:") and "disk is full" in r.getMessage()
    ]
    assert blamed == [], f"{len(blamed)} times: {blamed[0]}"


def _serve(tmp_path: Path, fallback: str) -> subprocess.CompletedProcess[str]:
    env = {**_env(), "PYTHONPATH": SOURCE, "DATABASE_URL": DOWN}
    env["CODE_HERO_FALLBACK_PATH"] = fallback
    port = str(_free_port())
    return subprocess.run(
        [*COMMAND, "serve", "--port", port],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_with_a_fallback_path_set_where_it_may_not_write_exits_with_one_line(
    tmp_path: Path,
) -> None:
    # Set explicitly, the operator asked for durability: no silent memory fallback.
    (tmp_path / "a-file").write_text("")
    done = _serve(tmp_path, str(tmp_path / "a-file" / "fb.sqlite"))
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    assert "error: CODE_HERO_FALLBACK_PATH=" in output, output


def test_a_journal_file_of_another_user_is_never_loaded(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    path = tmp_path / "fb.sqlite"
    OutageFile.claim(str(path), "postgresql://db").close()
    os.chown(path.with_name("fb.sqlite.entries"), 65534, 65534)
    with pytest.raises(ConfigurationError, match="owned by another user"):
        OutageFile.claim(str(path), "postgresql://db").close()


def test_the_fallback_file_taken_is_named_whole_at_start_and_in_health(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    config = create_postgres_checkpointer(DOWN, fallback_path="fb.sqlite")

    async def described() -> list[str]:
        async with EnhancedCheckpointerManager(config) as manager:
            return [b["description"] for b in manager.health_report()["backends"]]

    with caplog.at_level("INFO"):
        descriptions = asyncio.run(described())
    whole = str(tmp_path / "fb.sqlite")
    assert any(whole in d for d in descriptions), descriptions
    assert any(r.levelname == "INFO" and whole in r.getMessage() for r in caplog.records), (
        caplog.text
    )


@pytest.mark.postgres
def test_a_fallback_file_left_full_at_the_switch_back_is_emptied_once_there_is_room(
    own_pg: OwnPostgres, tmp_path: Path
) -> None:
    # The copy-back went through while the fallback's disk was full: its copies, the
    # copied entries and the ended outage stayed in the files (a restart would resume an
    # outage that is over). Once there is room, a check empties them.
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(small)]).returncode:
        pytest.skip("cannot mount a tmpfs")
    left: list[Any] = []

    async def room_then_check(manager: EnhancedCheckpointerManager) -> None:
        remount = ["mount", "-o", "remount,size=64M", str(small)]
        await asyncio.to_thread(subprocess.run, remount, check=True)
        await manager.probe_health()
        store = manager.router.store
        assert store is not None
        left.append(store.load())

    try:
        asyncio.run(_outage_then_copy_back(own_pg, small, 8_000_000, room_then_check))
    finally:
        subprocess.run(["umount", str(small)], check=False)
    loaded = left[0]
    assert loaded.empty and loaded.state.get("outage") is None, loaded.state
