"""A lock that a graph's node meets in a database of its own is the node's error: the
run ends ERROR after one execution. Only a lock of the gateway's own store releases a
run to resume (runs.executor, persistence.contention.from_store)."""

from __future__ import annotations

from pathlib import Path

from code_hero.app import create_app
from code_hero.config import create_sqlite_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.runs.executor import MAX_LOCK_RELEASES
from code_hero.settings import AppSettings, Limits
from tests.graphql import userlock_graph
from tests.graphql.clients import data, gql, until_finished
from tests.graphql.conftest import running

RUN = 'mutation($input: JSON!) { startRun(input: {graph: "g", input: $input}) { id } }'


def _settings(folder: Path) -> AppSettings:
    return AppSettings(
        gateway=GatewaySettings(
            checkpointer=create_sqlite_checkpointer(str(folder / "app.sqlite")),
            graphs={"g": f"{userlock_graph.__file__}:graph"},
            # A released run is claimed again at the next claim poll, a third of a
            # lease (5 s by default): these tests wait for MAX_LOCK_RELEASES of them.
            lease_seconds=3,
        ),
        limits=Limits(),
    )


async def test_a_lock_in_the_nodes_own_database_ends_the_run_after_one_execution(
    tmp_path: Path,
) -> None:
    async with running(create_app(_settings(tmp_path))) as srv:
        run_id = data(await gql(srv.http, RUN, {"input": {"folder": str(tmp_path)}}))
        run = await until_finished(srv.http, run_id["startRun"]["id"], seconds=30)
    assert run["status"] == "ERROR", run
    assert "database is locked" in run["error"]
    assert (tmp_path / "side-effects").read_text() == "x"  # the node ran once


async def test_a_store_lock_that_every_resumption_meets_ends_the_run(tmp_path: Path) -> None:
    # A store's lock error misread, or a lock held for ever: each release resumes the
    # run and repeats its step's side effects; after MAX_LOCK_RELEASES it ends ERROR.
    async with running(create_app(_settings(tmp_path))) as srv:
        given = {"folder": str(tmp_path), "as_store": True}
        run_id = data(await gql(srv.http, RUN, {"input": given}))["startRun"]["id"]
        run = await until_finished(srv.http, run_id, seconds=120)
    assert run["status"] == "ERROR", run
    assert "not resumed again" in run["error"] and "database is locked" in run["error"]
    side_effects = (tmp_path / "side-effects").read_text()
    assert side_effects == "x" * (MAX_LOCK_RELEASES + 1)


async def test_a_waiting_start_answers_at_the_first_release_for_a_store_lock(
    tmp_path: Path,
) -> None:
    # startRun(wait) waited for as long as the lock was held (a LOCK TABLE for a
    # minute: past a client's timeout); it answers at the first release, naming the
    # recorded run, which goes on.
    wait = (
        'mutation($input: JSON!) { startRun(input: {graph: "g", input: $input, wait: true}) '
        "{ id status } }"
    )
    async with running(create_app(_settings(tmp_path))) as srv:
        given = {"folder": str(tmp_path), "as_store": True}
        body = await gql(srv.http, wait, {"input": given})
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "UNAVAILABLE"
        assert error["extensions"]["retryAfter"] == 1
        assert "lock" in error["message"]
        run = await until_finished(srv.http, error["extensions"]["runId"], seconds=120)
    assert run["status"] == "ERROR"  # this lock never frees: released, then ended
    assert (tmp_path / "side-effects").read_text() == "x" * (MAX_LOCK_RELEASES + 1)
