"""Review of the durable fallback: what a killed server's outage leaves must not stop
the next one, and what it leaves must be carried on.

Real `code-hero serve` processes on a throwaway PostgreSQL cluster
(`test_durable_fallback.own_pg`): the cluster is stopped, the server takes work on its
fallback, is SIGKILLed, and a server is started again with the same configuration.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.graphql.clients import data
from tests.replicas.conftest import SLOW, Cluster
from tests.replicas.test_durable_fallback import (
    RUN,
    OwnPostgres,
    _in_postgres,
    _run,
    _start,
    _until,
    own_pg,
    servers,
)
from tests.replicas.test_outage import ask, wait_health, wait_steps

pytestmark = pytest.mark.postgres
__all__ = ["own_pg", "servers"]  # the fixtures, used by name

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
    first = _start_with(servers, tmp_path, "first", CODE_HERO_GRAPHS=graphs)
    own_pg.stop()
    run = asyncio.run(_run(first, graph="notes", input={}, wait=True))
    assert run["status"] == "SUCCESS"  # acknowledged, on the fallback
    first.kill()
    own_pg.start()
    # The entries are unpickled at open, before the graphs (and their modules) load.
    second = _start_with(servers, tmp_path, "second", CODE_HERO_GRAPHS=graphs)
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


def _start_with(servers: Cluster, tmp_path: Path, name: str, **env: str) -> Any:
    return servers.start(
        name,
        CODE_HERO_FALLBACK_PATH=str(tmp_path / "fallback.sqlite"),
        CODE_HERO_HEALTH_INTERVAL="0.2",
        **env,
    )


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
    saved = tmp_path / "saved"
    saved.mkdir()
    files = sorted(tmp_path.glob("fallback.sqlite*"))
    for file in files:
        (saved / file.name).write_bytes(file.read_bytes())
    own_pg.start()
    second = _start(servers, tmp_path, "second")
    asyncio.run(wait_health(second, "HEALTHY"))  # copied back
    later = asyncio.run(_run(second, threadId=run["threadId"], input={"delay": 0}, wait=True))
    assert later["status"] == "SUCCESS"  # the thread goes on in PostgreSQL
    sql = "SELECT updated_at, status FROM code_hero_threads WHERE thread_id = %s"
    [since] = own_pg.rows(sql, run["threadId"])
    second.kill()
    for file in tmp_path.glob("fallback.sqlite*"):
        file.unlink()
    for file in files:
        (tmp_path / file.name).write_bytes((saved / file.name).read_bytes())
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
    saved = tmp_path / "saved"  # as a kill mid copy-back leaves them (above)
    saved.mkdir()
    files = sorted(tmp_path.glob("fallback.sqlite*"))
    for file in files:
        (saved / file.name).write_bytes(file.read_bytes())
    own_pg.start()
    second = _start(servers, tmp_path, "second")
    asyncio.run(wait_health(second, "HEALTHY"))
    status = "SELECT status FROM code_hero_runs WHERE run_id = %s"
    _until(lambda: own_pg.rows(status, run["id"]) == [("SUCCESS",)], limit=60)  # taken over
    second.kill()
    for file in tmp_path.glob("fallback.sqlite*"):
        file.unlink()
    for file in files:
        (tmp_path / file.name).write_bytes((saved / file.name).read_bytes())
    third = _start(servers, tmp_path, "third")
    asyncio.run(wait_health(third, "HEALTHY"))
    assert own_pg.rows(status, run["id"]) == [("SUCCESS",)]  # ended once, not RUNNING again
