"""A lock that a graph's node meets in a database of its own is the node's error: the
run ends ERROR after one execution. Only a lock of the gateway's own store releases a
run to resume (runs.executor, persistence.contention.from_store)."""

from __future__ import annotations

from pathlib import Path

from code_hero.app import create_app
from code_hero.config import create_sqlite_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.settings import AppSettings, Limits
from tests.graphql import userlock_graph
from tests.graphql.clients import data, gql, until_finished
from tests.graphql.conftest import running

RUN = 'mutation($input: JSON!) { startRun(input: {graph: "g", input: $input}) { id } }'


async def test_a_lock_in_the_nodes_own_database_ends_the_run_after_one_execution(
    tmp_path: Path,
) -> None:
    settings = AppSettings(
        gateway=GatewaySettings(
            checkpointer=create_sqlite_checkpointer(str(tmp_path / "app.sqlite")),
            graphs={"g": f"{userlock_graph.__file__}:graph"},
        ),
        limits=Limits(),
    )
    async with running(create_app(settings)) as srv:
        run_id = data(await gql(srv.http, RUN, {"input": {"folder": str(tmp_path)}}))
        run = await until_finished(srv.http, run_id["startRun"]["id"], seconds=30)
    assert run["status"] == "ERROR", run
    assert "database is locked" in run["error"]
    assert (tmp_path / "side-effects").read_text() == "x"  # the node ran once
