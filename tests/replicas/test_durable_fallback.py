"""A server killed during an outage loses nothing it acknowledged: the durable fallback.

Real `code-hero serve` processes on a PostgreSQL cluster of the module's own, each
test on a database of its own in it (the shared one is never stopped): the test stops
the cluster, has the server take work on its fallback, SIGKILLs it, and starts a
server again with the same configuration. What the dead one acknowledged must reach
PostgreSQL, read there directly: the thread, the run with its end, every event (seq
1..n), its checkpoints. Nor may what it leaves stop the next start (a graph's own
class in a checkpoint), nor be undone by it: a run in flight goes on while the
database is still down, two kill cycles keep both servers' writes, a deletion stays,
and a copy replayed again after a kill rolls back nothing that came since. Skipped
where PostgreSQL's server binaries or a postgres user are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.graphql.clients import data
from tests.persistence.test_pg_disk_full import _free_port, _server_binary
from tests.replicas.conftest import SLOW, Cluster, Replica
from tests.replicas.test_outage import ask, wait_health, wait_steps

pytestmark = pytest.mark.postgres

START = """mutation($input: StartRunInput!) {
  startRun(input: $input) { id threadId status } }"""
RUN = "query($id: ID!) { run(id: $id) { id threadId status } }"
ENV = {"CODE_HERO_HEALTH_INTERVAL": "0.2"}


@dataclass
class OwnPostgres:
    """A throwaway PostgreSQL cluster the test may stop and start; `url` names the test's
    own database in it."""

    url: str
    data: Path
    base: Path
    pg_ctl: str
    port: int
    uid: int
    gid: int

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [self.pg_ctl, "-D", str(self.data), *args],
            capture_output=True,
            check=True,
            user=self.uid,
            group=self.gid,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.base / "log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        status = [self.pg_ctl, "-D", str(self.data), "status"]
        return (
            subprocess.run(status, capture_output=True, user=self.uid, group=self.gid).returncode
            == 0
        )

    def admin(self, sql: str) -> None:
        """A statement on the cluster's `postgres` database (CREATE/DROP DATABASE)."""
        url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.encode())

    def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return list(conn.execute(sql.encode(), params).fetchall())


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[OwnPostgres]:
    """The cluster, made once for the module's tests (initdb is ~1 s): each test stops and
    starts it as its outage, on a database of its own (`own_pg`)."""
    initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed")
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user to run a cluster as (initdb refuses root)")
    if os.geteuid() != 0:
        pytest.skip("running a cluster as the postgres user needs root")
    base = Path(tempfile.mkdtemp(prefix="code-hero-durable-"))
    base.chmod(0o755)
    os.chown(base, owner.pw_uid, owner.pw_gid)
    data = base / "data"
    port = _free_port()
    subprocess.run(
        [initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
        capture_output=True,
        check=True,
        user=owner.pw_uid,
        group=owner.pw_gid,
    )
    pg = OwnPostgres(
        f"postgresql://postgres@127.0.0.1:{port}/postgres",
        data,
        base,
        pg_ctl,
        port,
        owner.pw_uid,
        owner.pw_gid,
    )
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def own_pg(own_cluster: OwnPostgres) -> Iterator[OwnPostgres]:
    """The cluster, running, with a fresh database for this test; dropped afterwards."""
    if not own_cluster.running():  # a test that failed mid-outage left it stopped
        own_cluster.start()
    name = f"durable_{uuid.uuid4().hex[:12]}"
    own_cluster.admin(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:{own_cluster.port}/{name}"
    try:
        yield dataclasses.replace(own_cluster, url=url)
    finally:
        if not own_cluster.running():
            own_cluster.start()
        own_cluster.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def servers(own_pg: OwnPostgres, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(own_pg.url, tmp_path)
    try:
        yield c
    finally:
        c.stop()


def _start(servers: Cluster, tmp_path: Path, name: str, **env: str) -> Replica:
    """A server with the durable fallback at the test's own path (the same each time)."""
    path = str(tmp_path / "fallback.sqlite")
    return servers.start(name, CODE_HERO_FALLBACK_PATH=path, **{**ENV, **env})


def _save_files(tmp_path: Path) -> list[Path]:
    """Copies the fallback's files (`fallback.sqlite*`) aside, into `saved`; their paths."""
    saved = tmp_path / "saved"
    saved.mkdir()
    files = sorted(tmp_path.glob("fallback.sqlite*"))
    for file in files:
        (saved / file.name).write_bytes(file.read_bytes())
    return files


def _restore_files(tmp_path: Path, files: list[Path]) -> None:
    """The fallback's files as `_save_files` saved them, and no others."""
    for file in tmp_path.glob("fallback.sqlite*"):
        file.unlink()
    for file in files:
        file.write_bytes((tmp_path / "saved" / file.name).read_bytes())


async def _run(server: Replica, **input: Any) -> dict[str, Any]:
    body = await ask(server, START, {"input": {"graph": "slow", **input}})
    run: dict[str, Any] = data(body)["startRun"]
    return run


def _until(condition: Any, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def _in_postgres(pg: OwnPostgres, run: dict[str, Any]) -> tuple[str, list[int], int]:
    """The run's status, its events' seqs and its thread's checkpoints, as PostgreSQL has
    them (read directly)."""
    [(status,)] = pg.rows("SELECT status FROM code_hero_runs WHERE run_id = %s", run["id"])
    seqs = [
        r[0]
        for r in pg.rows(
            "SELECT seq FROM code_hero_run_events WHERE run_id = %s ORDER BY seq", run["id"]
        )
    ]
    [(checkpoints,)] = pg.rows(
        "SELECT count(*) FROM checkpoints WHERE thread_id = %s", run["threadId"]
    )
    return status, seqs, checkpoints


def _stored(pg: OwnPostgres, run_id: str) -> bool:
    with contextlib.suppress(psycopg.Error):
        return bool(pg.rows("SELECT 1 FROM code_hero_runs WHERE run_id = %s", run_id))
    return False


def test_a_run_acknowledged_in_an_outage_survives_a_sigkill(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    first = _start(servers, tmp_path, "first")
    own_pg.stop()
    run = asyncio.run(_run(first, input={"delay": 0}, wait=True))
    assert run["status"] == "SUCCESS"  # acknowledged, on the fallback
    first.kill()
    own_pg.start()
    second = _start(servers, tmp_path, "second")
    asyncio.run(wait_health(second, "HEALTHY"))
    assert own_pg.rows(
        "SELECT status FROM code_hero_threads WHERE thread_id = %s", run["threadId"]
    ) == [("IDLE",)]
    status, seqs, checkpoints = _in_postgres(own_pg, run)
    assert status == "SUCCESS"
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 2
    assert checkpoints >= 7  # the input's and one per step of the 6
    assert data(asyncio.run(ask(second, RUN, {"id": run["id"]})))["run"]["status"] == "SUCCESS"


def test_a_run_in_flight_at_the_kill_is_resumed_to_its_end(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    first = _start(servers, tmp_path, "first")
    own_pg.stop()
    run = asyncio.run(_run(first, input={"delay": 0.3}))
    asyncio.run(wait_steps(first, run["id"], 2))  # two steps stored on the fallback
    first.kill()  # mid-run
    own_pg.start()
    second = _start(servers, tmp_path, "second")
    asyncio.run(wait_health(second, "HEALTHY"))
    assert _stored(own_pg, run["id"])  # copied back: its row, RUNNING under a dead lease
    # Not RUNNING forever: claimed once the dead lease lapses, resumed, ended.
    _until(
        lambda: (
            own_pg.rows("SELECT status FROM code_hero_runs WHERE run_id = %s", run["id"])
            == [("SUCCESS",)]
        ),
        limit=60,
    )
    _, seqs, checkpoints = _in_postgres(own_pg, run)
    assert seqs == list(range(1, len(seqs) + 1)) and checkpoints >= 7
    [(steps,)] = own_pg.rows(
        "SELECT output->'steps' FROM code_hero_runs WHERE run_id = %s", run["id"]
    )
    assert steps == [f"s{i}" for i in range(6)]  # each step once: resumed, not repeated


def test_restarted_while_still_down_it_serves_the_dead_ones_thread_then_copies_it(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    first = _start(servers, tmp_path, "first")
    own_pg.stop()
    run = asyncio.run(_run(first, input={"delay": 0}, wait=True))
    assert run["status"] == "SUCCESS"
    first.kill()
    second = _start(servers, tmp_path, "second")  # the database still down
    health = asyncio.run(wait_health(second, "DEGRADED"))
    assert health["pendingSync"] > 0
    body = asyncio.run(ask(second, RUN, {"id": run["id"]}))
    assert data(body)["run"]["status"] == "SUCCESS"  # from the fallback's file
    assert body["extensions"]["degraded"] is True
    own_pg.start()
    asyncio.run(wait_health(second, "HEALTHY"))
    status, seqs, checkpoints = _in_postgres(own_pg, run)
    assert status == "SUCCESS" and seqs == list(range(1, len(seqs) + 1)) and checkpoints >= 7


def test_a_second_server_takes_a_file_of_its_own(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    _start(servers, tmp_path, "first")
    _start(servers, tmp_path, "second")
    assert (tmp_path / "fallback-2.sqlite").exists()
    assert (tmp_path / "fallback-2.sqlite.entries").exists()


# A user graph whose state holds an instance of a class of its own file: the kind of
# value a checkpoint carries (a dataclass, a pydantic model of the graph's module).
NOTES = """
from dataclasses import dataclass
from typing import Any
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict


@dataclass
class Note:
    text: str


class State(TypedDict, total=False):
    note: Note
    delay: float


async def write(state: State) -> dict[str, Any]:
    return {"note": Note("kept")}


builder = StateGraph(State)
builder.add_node("write", write)
builder.add_edge(START, "write")
builder.add_edge("write", END)
graph = builder.compile()
"""


def test_a_graph_s_own_class_in_an_outage_checkpoint_does_not_stop_the_next_start(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    graph = tmp_path / "notes_graph.py"
    graph.write_text(NOTES)
    graphs = f"{SLOW},notes={graph}:graph"
    first = _start(servers, tmp_path, "first", CODE_HERO_GRAPHS=graphs)
    own_pg.stop()
    run = asyncio.run(_run(first, graph="notes", input={}, wait=True))
    assert run["status"] == "SUCCESS"  # acknowledged, on the fallback
    first.kill()
    own_pg.start()
    # The entries are unpickled at open, before the graphs (and their modules) load.
    second = _start(servers, tmp_path, "second", CODE_HERO_GRAPHS=graphs)
    asyncio.run(wait_health(second, "HEALTHY"))
    status, _, checkpoints = _in_postgres(own_pg, run)
    assert status == "SUCCESS" and checkpoints >= 2


def test_a_run_in_flight_at_the_kill_goes_on_while_the_database_is_still_down(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    first = _start(servers, tmp_path, "first")
    own_pg.stop()
    run = asyncio.run(_run(first, input={"delay": 0.3}))
    asyncio.run(wait_steps(first, run["id"], 2))  # two steps stored on the fallback
    first.kill()  # mid-run
    second = _start(servers, tmp_path, "second")  # the database still down
    asyncio.run(wait_health(second, "DEGRADED"))

    def ended() -> bool:
        body = asyncio.run(ask(second, RUN, {"id": run["id"]}))
        return bool(data(body)["run"]["status"] == "SUCCESS")

    _until(ended, limit=60)  # its dead lease lapses; resumed on the fallback
    own_pg.start()
    asyncio.run(wait_health(second, "HEALTHY"))
    status, seqs, checkpoints = _in_postgres(own_pg, run)
    assert status == "SUCCESS" and seqs == list(range(1, len(seqs) + 1)) and checkpoints >= 7
    [(steps,)] = own_pg.rows(
        "SELECT output->'steps' FROM code_hero_runs WHERE run_id = %s", run["id"]
    )
    assert steps == [f"s{i}" for i in range(6)]  # each step once: resumed, not repeated


DELETE = "mutation($t: ID!) { deleteThread(id: $t) { deleted } }"


def test_two_kill_cycles_in_one_outage_leave_both_servers_writes(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    first = _start(servers, tmp_path, "first")
    own_pg.stop()
    one = asyncio.run(_run(first, input={"delay": 0}, wait=True))
    first.kill()
    second = _start(servers, tmp_path, "second")  # the database still down
    asyncio.run(wait_health(second, "DEGRADED"))
    two = asyncio.run(_run(second, input={"delay": 0}, wait=True))
    assert one["status"] == two["status"] == "SUCCESS"
    second.kill()
    own_pg.start()
    third = _start(servers, tmp_path, "third")
    asyncio.run(wait_health(third, "HEALTHY"))
    for run in (one, two):
        status, seqs, checkpoints = _in_postgres(own_pg, run)
        assert status == "SUCCESS" and seqs == list(range(1, len(seqs) + 1))
        assert checkpoints >= 7


def test_a_thread_deleted_in_the_outage_stays_deleted_after_a_kill(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    first = _start(servers, tmp_path, "first")
    own_pg.stop()
    gone = asyncio.run(_run(first, input={"delay": 0}, wait=True))  # born in the outage
    kept = asyncio.run(_run(first, input={"delay": 0}, wait=True))
    assert data(asyncio.run(ask(first, DELETE, {"t": gone["threadId"]})))["deleteThread"]["deleted"]
    first.kill()
    own_pg.start()
    second = _start(servers, tmp_path, "second")
    asyncio.run(wait_health(second, "HEALTHY"))
    for table in ("code_hero_threads", "checkpoints", "code_hero_runs"):
        sql = f"SELECT 1 FROM {table} WHERE thread_id = %s"
        assert own_pg.rows(sql, gone["threadId"]) == []
    status, _, checkpoints = _in_postgres(own_pg, kept)
    assert status == "SUCCESS" and checkpoints >= 7


def test_a_copy_replayed_again_after_a_kill_does_not_roll_back_what_came_since(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    first = _start(servers, tmp_path, "first")
    own_pg.stop()
    run = asyncio.run(_run(first, input={"delay": 0}, wait=True))  # a thread born in it
    first.kill()
    # The files as a kill leaves them after the primary took the copy-back but before
    # the file forgot it: between a batch's commit and its rows' removal, or any time
    # before the journal's tail (a thread's deferred copy of its finished runs) replays.
    files = _save_files(tmp_path)
    own_pg.start()
    second = _start(servers, tmp_path, "second")
    asyncio.run(wait_health(second, "HEALTHY"))  # copied back
    later = asyncio.run(_run(second, threadId=run["threadId"], input={"delay": 0}, wait=True))
    assert later["status"] == "SUCCESS"  # the thread goes on in PostgreSQL
    sql = "SELECT updated_at, status FROM code_hero_threads WHERE thread_id = %s"
    [since] = own_pg.rows(sql, run["threadId"])
    second.kill()
    _restore_files(tmp_path, files)
    third = _start(servers, tmp_path, "third")  # replays the copy a second time
    asyncio.run(wait_health(third, "HEALTHY"))
    assert own_pg.rows(sql, run["threadId"]) == [since]  # not the outage's older row


def test_a_run_ended_since_is_not_made_running_again_by_a_copy_replayed_after_a_kill(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    first = _start(servers, tmp_path, "first")
    own_pg.stop()
    run = asyncio.run(_run(first, input={"delay": 0.3}))
    asyncio.run(wait_steps(first, run["id"], 2))
    first.kill()  # mid-run: RUNNING under its lease in the file
    files = _save_files(tmp_path)  # as a kill mid copy-back leaves them (above)
    own_pg.start()
    second = _start(servers, tmp_path, "second")
    asyncio.run(wait_health(second, "HEALTHY"))
    status = "SELECT status FROM code_hero_runs WHERE run_id = %s"
    _until(lambda: own_pg.rows(status, run["id"]) == [("SUCCESS",)], limit=60)  # taken over
    second.kill()
    _restore_files(tmp_path, files)
    third = _start(servers, tmp_path, "third")
    asyncio.run(wait_health(third, "HEALTHY"))
    assert own_pg.rows(status, run["id"]) == [("SUCCESS",)]  # ended once, not RUNNING again
