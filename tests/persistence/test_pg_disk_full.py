"""A real full disk under PostgreSQL, on a cluster of the test's own.

The shared server's disk is not ours to fill: the fixture starts a throwaway
cluster (initdb, under a second here) whose test database lives in a tablespace
on a 40 MiB tmpfs it mounts, with the WAL on the ordinary disk, so filling the
tmpfs makes the server answer disk_full (53100, "could not extend file") and
not stop. Skipped, saying why, where a tmpfs cannot be mounted (not root, no
CAP_SYS_ADMIN) or PostgreSQL's server binaries are not installed.

The probe is a read, which a full disk does not stop: while the outage is a
full disk it also writes a small temporary file (`probe(room=True)`), so the
copy-back is not tried (and stopped) at every probe until there is room.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import psycopg.errors as pg
import pytest

from code_hero.checkpointing import create_postgres_checkpointer
from code_hero.persistence.diagnosis import error_category
from tests.persistence.test_down_means_down import _manager, _stored, _writer

pytestmark = pytest.mark.postgres


@dataclass
class SmallDisk:
    """A database whose files are on a small tmpfs, and a way to fill it."""

    url: str
    mount: Path

    def fill(self) -> None:
        """Write zeros to a file on the tmpfs until no byte more fits."""
        chunk = bytes(1 << 20)
        with (self.mount / "filler").open("wb", buffering=0) as out:
            while True:
                try:
                    out.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        return
                    chunk = chunk[: len(chunk) // 2]

    def free(self) -> None:
        (self.mount / "filler").unlink()


def _server_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def small_disk() -> Iterator[SmallDisk]:
    initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for a full disk needs root")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user to run a cluster as (initdb refuses root)")
    base = Path(tempfile.mkdtemp(prefix="code-hero-diskfull-"))
    base.chmod(0o755)
    os.chown(base, owner.pw_uid, owner.pw_gid)
    mount, data = base / "disk", base / "data"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size=40m,mode=0755,uid={owner.pw_uid}", "tmpfs", mount],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        shutil.rmtree(base)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    started = False
    try:
        as_postgres = {"user": owner.pw_uid, "group": owner.pw_gid, "check": True}
        subprocess.run(
            [initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
            capture_output=True,
            **as_postgres,  # type: ignore[arg-type]
        )
        for attempt in range(3):
            # A port free when looked at may be taken before the server binds it (other
            # workers start servers too): seen once in CI, pg_ctl start exiting 1.
            port = _free_port()
            options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
            try:
                subprocess.run(
                    [pg_ctl, "-D", data, "-o", options, "-l", base / "log", "-w", "start"],
                    capture_output=True,
                    **as_postgres,  # type: ignore[arg-type]
                )
            except subprocess.CalledProcessError:
                found = base / "log"
                log = found.read_text(errors="replace")[-2000:] if found.exists() else ""
                if attempt == 2:
                    raise RuntimeError(f"the test's PostgreSQL did not start:\n{log}") from None
                continue
            break
        started = True
        (mount / "ts").mkdir()
        os.chown(mount / "ts", owner.pw_uid, owner.pw_gid)
        admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE small LOCATION '{mount / 'ts'}'".encode())
            conn.execute("CREATE DATABASE small TABLESPACE small")
        yield SmallDisk(f"postgresql://postgres@127.0.0.1:{port}/small", mount)
    finally:
        if started:
            subprocess.run(
                [pg_ctl, "-D", data, "-m", "immediate", "stop"],
                capture_output=True,
                user=owner.pw_uid,
                group=owner.pw_gid,
            )
        subprocess.run(["umount", mount], capture_output=True)
        with contextlib.suppress(OSError):
            shutil.rmtree(base)


async def test_a_full_disk_fails_over_and_the_probe_waits_for_room(small_disk: SmallDisk) -> None:
    config = create_postgres_checkpointer(small_disk.url, health_check_interval=3600)
    async with _manager(config) as manager:
        write = _writer(manager)
        await write("before")
        small_disk.fill()
        # Rows go into the pages' free space until a table needs a new page: that
        # write, and every one after it, goes on on the fallback instead of failing.
        writes = 0
        while manager.router.active == 0 and writes < 5000:
            await write("during")
            writes += 1
        primary = manager.router.primary
        assert manager.router.active == 1, "no write met the full disk"
        assert error_category(primary.last_error) == "disk full"
        await write("during")
        writes += 1

        # A read passes on a full disk; the probe's temporary file does not.
        backend = primary.backend
        assert backend is not None
        await backend.probe()
        with pytest.raises(pg.DiskFull):
            await backend.probe(room=True)
        assert (await manager.health_check())["overall_status"] == "degraded"
        assert error_category(primary.last_error) == "disk full"
        assert manager.router.pending_sync > 0

        small_disk.free()
        assert (await manager.health_check())["overall_status"] == "healthy"
        assert manager.router.pending_sync == 0 and manager.router.quarantined == 0
        assert _stored(config, "during") == writes
        await write("after")
        assert _stored(config, "after") == 1


async def test_one_listing_that_spills_into_a_full_temp_disk_fails_over_nothing(
    small_disk: SmallDisk,
) -> None:
    # The database's files on the ordinary disk, its temporary files on the small one
    # (temp_tablespaces on a volume of its own): writes have room, one big sort not.
    admin = small_disk.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE big")
        conn.execute("ALTER DATABASE big SET temp_tablespaces = 'small'")
        conn.execute("ALTER DATABASE big SET work_mem = '64kB'")
    url = small_disk.url.rsplit("/", 1)[0] + "/big"
    config = create_postgres_checkpointer(url, health_check_interval=3600)
    async with _manager(config) as manager:
        write = _writer(manager)
        for i in range(2000):
            await write(f"t{i}")
        small_disk.fill()
        await write("fits")  # the disk of the database's files has room
        assert manager.router.active == 0
        saver = manager.get_checkpointer()
        # A listing of every checkpoint sorts them: its temporary file meets the full disk.
        with pytest.raises(Exception):  # noqa: B017 (whatever the one call raises)
            [t async for t in saver.alist(None)]
        # That one call failed; the database serves every other: no outage.
        assert manager.router.active == 0, manager.router.primary.last_error
        await write("after")
        assert _stored(config, "after") == 1


async def test_a_background_loops_disk_full_warns_while_the_probe_finds_none(
    small_disk: SmallDisk,
) -> None:
    # The webhook outbox and the bus write to the primary outside the router: the
    # router's probe, a read, passes on a full disk, so no outage is declared. Logged at
    # DEBUG as an outage's (as SQLite's full file was, see test_outage_log), every
    # failing write of a loop on a server with no other traffic goes unsaid.
    config = create_postgres_checkpointer(small_disk.url, health_check_interval=3600)
    async with _manager(config) as manager:
        with psycopg.connect(small_disk.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE filler (b bytea)")
        small_disk.fill()
        error: BaseException | None = None
        with psycopg.connect(small_disk.url, autocommit=True) as conn:
            try:
                for _ in range(200):
                    conn.execute("INSERT INTO filler SELECT decode(repeat('ab', 8000), 'hex')")
            except pg.DiskFull as exc:
                error = exc
        assert error is not None, "the disk took every write"
        await manager.router.check()
        assert manager.router.serving  # the probe did not find it
        assert manager.router.background_level(error) == logging.WARNING, error
