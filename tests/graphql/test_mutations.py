"""Every mutation of the contract, over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from tests.graphql.clients import data, gql, until_finished
from tests.graphql.conftest import Server

RUN = "id threadId graph status error output metadata startedAt finishedAt"


async def start(server: Server, **fields: Any) -> dict[str, Any]:
    """startRun with these input fields; the run as served."""
    body = await gql(
        server.http,
        f"mutation($input: StartRunInput!) {{ startRun(input: $input) {{ {RUN} }} }}",
        {"input": fields},
    )
    run: dict[str, Any] = data(body)["startRun"]
    return run


async def run_of(server: Server, run_id: str) -> dict[str, Any]:
    body = await gql(server.http, f"query($id: ID!) {{ run(id: $id) {{ {RUN} }} }}", {"id": run_id})
    run: dict[str, Any] = data(body)["run"]
    return run


async def thread_status(server: Server, thread_id: str) -> str:
    body = await gql(server.http, "query($t: ID!) { thread(id: $t) { status } }", {"t": thread_id})
    status: str = data(body)["thread"]["status"]
    return status


async def test_start_run_waiting_and_not(server: Server) -> None:
    waited = await start(server, message="Help me build a FastAPI app", wait=True)
    assert waited["status"] == "SUCCESS" and waited["finishedAt"] and waited["graph"] == "code_hero"
    assert waited["output"]["messages"][-1]["type"] == "ai"

    queued = await start(server, message="Write docs for the API", metadata={"k": 1})
    assert queued["status"] in ("PENDING", "RUNNING") and queued["finishedAt"] is None
    assert queued["metadata"] == {"k": 1}
    done = await until_finished(server.http, queued["id"])
    assert done["status"] == "SUCCESS"
    assert await thread_status(server, queued["threadId"]) == "IDLE"

    raw = await start(
        server, graph="slow", input={"steps": ["given"]}, config={"delay": 0}, wait=True
    )
    assert raw["status"] == "SUCCESS" and raw["graph"] == "slow"
    assert raw["output"]["steps"] == ["given", "first", "second", "third"]


async def test_interrupt_then_resume(server: Server) -> None:
    asked = await start(
        server, message="build a fastapi app", config={"require_approval": True}, wait=True
    )
    assert asked["status"] == "INTERRUPTED" and asked["output"] is None
    assert await thread_status(server, asked["threadId"]) == "INTERRUPTED"
    body = await gql(
        server.http,
        "query($id: ID!) { run(id: $id) { events(first: 1000) { __typename "
        "... on Interrupted { node value namespace } } } }",
        {"id": asked["id"]},
    )
    interrupts = [e for e in data(body)["run"]["events"] if e["__typename"] == "Interrupted"]
    assert interrupts and interrupts[0]["node"] == "SUPERVISOR"
    assert interrupts[0]["value"]["type"] == "approval_request"

    resumed = await start(server, threadId=asked["threadId"], resume={"approved": True}, wait=True)
    assert resumed["status"] == "SUCCESS" and resumed["threadId"] == asked["threadId"]
    assert await thread_status(server, asked["threadId"]) == "IDLE"


async def test_run_from_a_past_checkpoint(server: Server) -> None:
    first = await start(server, message="Help me build a FastAPI app", wait=True)
    body = await gql(
        server.http,
        "query($t: ID!) { thread(id: $t) { checkpoints(first: 100) "
        "{ edges { node { id step } } } } }",
        {"t": first["threadId"]},
    )
    nodes = [e["node"] for e in data(body)["thread"]["checkpoints"]["edges"]]
    origin = next(n for n in nodes if n["step"] == -1)
    fork = await start(
        server,
        threadId=first["threadId"],
        message="Research LangGraph instead",
        fromCheckpointId=origin["id"],
        wait=True,
    )
    assert fork["status"] == "SUCCESS"
    history = await gql(
        server.http,
        "query($t: ID!) { thread(id: $t) { checkpoints(first: 100) "
        "{ edges { node { id parentId runId } } } } }",
        {"t": first["threadId"]},
    )
    edges = data(history)["thread"]["checkpoints"]["edges"]
    children = [e["node"] for e in edges if e["node"]["parentId"] == origin["id"]]
    assert len(children) == 2  # the past checkpoint got a second child: a branch


async def test_cancel_run(server: Server) -> None:
    # Only its cancel ends it (3 x 1 s ended first once on a loaded machine: SUCCESS).
    run = await start(server, graph="slow", message="take your time", config={"delay": 30.0})
    body = await gql(
        server.http, f"mutation($id: ID!) {{ cancelRun(id: $id) {{ {RUN} }} }}", {"id": run["id"]}
    )
    cancelled = data(body)["cancelRun"]
    assert cancelled["status"] == "CANCELLED" and cancelled["finishedAt"]
    assert await thread_status(server, run["threadId"]) == "IDLE"
    again = await gql(
        server.http, "mutation($id: ID!) { cancelRun(id: $id) { status } }", {"id": run["id"]}
    )
    assert data(again)["cancelRun"]["status"] == "CANCELLED"  # a finished run is unchanged


async def test_multitask_enqueue_and_interrupt(server: Server) -> None:
    slow = {"graph": "slow", "message": "go", "config": {"delay": 0.05}}
    first = await start(server, **slow)
    queued = await start(server, threadId=first["threadId"], multitask="ENQUEUE", **slow)
    assert queued["status"] == "PENDING"
    assert (await until_finished(server.http, first["id"]))["status"] == "SUCCESS"
    assert (await until_finished(server.http, queued["id"]))["status"] == "SUCCESS"

    # Only the takeover ends it (3 x 0.05 s ended first once on a loaded machine:
    # SUCCESS, not CANCELLED); it is cancelled at once.
    busy = await start(server, threadId=first["threadId"], **{**slow, "config": {"delay": 30.0}})
    takeover = await start(server, threadId=first["threadId"], multitask="INTERRUPT", **slow)
    assert (await run_of(server, busy["id"]))["status"] == "CANCELLED"
    assert (await until_finished(server.http, takeover["id"]))["status"] == "SUCCESS"


async def test_delete_run(server: Server) -> None:
    run = await start(server, message="Help me build a FastAPI app", wait=True)
    query = "mutation($id: ID!) { deleteRun(id: $id) { runId deleted } }"
    body = await gql(server.http, query, {"id": run["id"]})
    assert data(body)["deleteRun"] == {"runId": run["id"], "deleted": True}
    gone = await gql(server.http, "query($id: ID!) { run(id: $id) { id } }", {"id": run["id"]})
    assert data(gone)["run"] is None
    again = await gql(server.http, query, {"id": run["id"]})
    assert data(again)["deleteRun"] == {"runId": run["id"], "deleted": False}

    going = await start(server, graph="slow", message="go", config={"delay": 1.0})
    body = await gql(server.http, query, {"id": going["id"]})
    assert data(body)["deleteRun"]["deleted"] is True  # cancelled first, then deleted


async def test_delete_thread(server: Server) -> None:
    run = await start(server, message="Help me build a FastAPI app", wait=True)
    await start(server, threadId=run["threadId"], message="And add tests", wait=True)
    count = await gql(
        server.http,
        "query($t: ID!) { thread(id: $t) { checkpoints(first: 100) { edges { cursor } } } }",
        {"t": run["threadId"]},
    )
    checkpoints = len(data(count)["thread"]["checkpoints"]["edges"])
    query = """mutation($id: ID!) {
      deleteThread(id: $id) { threadId deleted checkpointsDeleted runsDeleted }
    }"""
    body = await gql(server.http, query, {"id": run["threadId"]})
    deleted = data(body)["deleteThread"]
    assert deleted["threadId"] == run["threadId"] and deleted["deleted"] is True
    assert deleted["runsDeleted"] == 2
    assert deleted["checkpointsDeleted"] >= checkpoints  # every namespace, subgraphs too
    after = await gql(
        server.http,
        "query($t: ID!, $r: ID!) { thread(id: $t) { id } run(id: $r) { id } "
        "checkpoint(threadId: $t) { id } }",
        {"t": run["threadId"], "r": run["id"]},
    )
    assert data(after) == {"thread": None, "run": None, "checkpoint": None}
    again = await gql(server.http, query, {"id": run["threadId"]})
    assert data(again)["deleteThread"] == {
        "threadId": run["threadId"],
        "deleted": False,
        "checkpointsDeleted": 0,
        "runsDeleted": 0,
    }
