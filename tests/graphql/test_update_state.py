"""`updateState`: a human edit saved as a checkpoint, over GraphQL on SQLite and PostgreSQL.

Reducers apply (messages and notes are appended to), `asNode` counts the edit as
that node's update, a past checkpoint is forked, and a run started afterwards
begins from the edited state; a busy thread, unknown ids, keys and nodes are
refused with their codes, and another user's thread looks missing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from code_hero.app import create_app
from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.settings import AppSettings
from tests.auth.issuer import Issuer
from tests.faults import BlackHoleProxy, with_port
from tests.graphql.clients import codes, data, gql, until_finished
from tests.graphql.conftest import SLOW_GRAPH, Server, checkpointer_for, running
from tests.graphql.test_auth import ALICE_KEY, BOB_KEY, ROOT_KEY, client, secured
from tests.graphql.test_outage import PG_PORT, wait_for_status

EDIT_GRAPH = f"{Path(__file__).with_name('edit_graph.py')}:graph"
CHECKPOINT = "id parentId source step next values threadId namespace updatedBy"
UPDATE = f"mutation($input: UpdateStateInput!) {{ updateState(input: $input) {{ {CHECKPOINT} }} }}"
START = "mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status output } }"
DELETE = "mutation($id: ID!) { deleteThread(id: $id) { deleted } }"
THREAD = f"""query($id: ID!) {{ thread(id: $id) {{ status updatedAt
  latestCheckpoint {{ {CHECKPOINT} }}
  checkpoints(first: 100) {{ edges {{ node {{ {CHECKPOINT} }} }} }} }} }}"""


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


@pytest.fixture
def gateway_settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> GatewaySettings:
    return GatewaySettings(
        checkpointer=checkpointer_for(backend, request, tmp_path),
        # "support": the name the README's examples give the same graph.
        graphs={"slow": SLOW_GRAPH, "edits": EDIT_GRAPH, "support": EDIT_GRAPH},
    )


async def start(http: Any, **fields: Any) -> dict[str, Any]:
    run: dict[str, Any] = data(await gql(http, START, {"input": fields}))["startRun"]
    return run


async def edit(http: Any, **fields: Any) -> dict[str, Any]:
    return await gql(http, UPDATE, {"input": fields})


async def thread(http: Any, thread_id: str) -> dict[str, Any]:
    found: dict[str, Any] = data(await gql(http, THREAD, {"id": thread_id}))["thread"]
    return found


def said(message: dict[str, Any]) -> str:
    return str(message["content"])


async def test_an_edit_goes_through_reducers_and_the_next_run_starts_from_it(
    server: Server,
) -> None:
    http = server.http
    first = await start(
        http, graph="edits", input={"messages": [{"role": "user", "content": "hello"}]}, wait=True
    )
    assert first["status"] == "SUCCESS"
    before = await thread(http, first["threadId"])

    body = await edit(
        http,
        threadId=first["threadId"],
        values={"messages": [{"role": "user", "content": "edited"}], "notes": ["by hand"]},
    )
    made = data(body)["updateState"]
    assert made["source"] == "UPDATE" and made["threadId"] == first["threadId"]
    assert made["parentId"] == before["latestCheckpoint"]["id"]
    # Appended by the reducers, not replaced.
    assert [said(m) for m in made["values"]["messages"]] == ["hello", "saw: hello", "edited"]
    assert made["values"]["notes"] == ["draft", "published:none", "by hand"]

    after = await thread(http, first["threadId"])
    assert after["latestCheckpoint"]["id"] == made["id"]
    assert after["checkpoints"]["edges"][0]["node"]["source"] == "UPDATE"
    assert after["status"] == "IDLE" and after["updatedAt"] > before["updatedAt"]

    # A plain channel is replaced, as a node's update would.
    titled = data(await edit(http, threadId=first["threadId"], values={"title": "T1"}))
    assert titled["updateState"]["values"]["title"] == "T1"
    assert titled["updateState"]["parentId"] == made["id"]

    again = await start(
        http,
        threadId=first["threadId"],
        graph="edits",
        input={"messages": [{"role": "user", "content": "again"}]},
        wait=True,
    )
    assert again["status"] == "SUCCESS"
    messages = again["output"]["messages"]
    assert said(messages[-1]) == "saw: hello | saw: hello | edited | again"
    assert again["output"]["title"] == "T1"


async def test_as_node_and_a_fork_from_a_past_checkpoint(server: Server) -> None:
    http = server.http
    run = await start(
        http, graph="edits", input={"messages": [{"role": "user", "content": "one"}]}, wait=True
    )
    thread_id = run["threadId"]
    history = [e["node"] for e in (await thread(http, thread_id))["checkpoints"]["edges"]]
    drafted = next(c for c in history if c["next"] == ["approval"])  # after `draft`, step 1
    assert drafted["values"]["notes"] == ["draft"]

    # As `draft`: LangGraph goes on as if draft had just written this.
    as_draft = data(
        await edit(http, threadId=thread_id, values={"title": "by draft"}, asNode="draft")
    )["updateState"]
    assert as_draft["next"] == ["approval"] and as_draft["source"] == "UPDATE"
    assert as_draft["updatedBy"] == ["draft"]  # the gateway records as_node for updatedBy

    fork = data(
        await edit(
            http, threadId=thread_id, checkpointId=drafted["id"], values={"notes": ["forked"]}
        )
    )["updateState"]
    # LangGraph records a fork as an update too, its parent the past checkpoint.
    assert fork["parentId"] == drafted["id"] and fork["source"] == "UPDATE"
    assert fork["updatedBy"] == []  # no asNode: LangGraph's choice is recorded nowhere
    assert fork["values"]["notes"] == ["draft", "forked"]
    assert fork["step"] == drafted["step"] + 1
    latest = await thread(http, thread_id)
    assert latest["latestCheckpoint"]["id"] == fork["id"]

    # Re-run from here: a run from the fork sees its state.
    rerun = await start(
        http,
        threadId=thread_id,
        graph="edits",
        fromCheckpointId=fork["id"],
        input={"messages": [{"role": "user", "content": "two"}]},
        wait=True,
    )
    assert rerun["status"] == "SUCCESS"
    assert rerun["output"]["notes"][:2] == ["draft", "forked"]
    assert said(rerun["output"]["messages"][-1]) == "saw: one | saw: one | two"


async def test_refusals(server: Server) -> None:
    http = server.http
    run = await start(http, graph="edits", input={"notes": ["x"]}, wait=True)
    thread_id = run["threadId"]

    async def refused(**fields: Any) -> list[str]:
        return codes(await edit(http, **fields))

    assert await refused(threadId="no-such-thread", values={"notes": []}) == ["NOT_FOUND"]
    assert await refused(
        threadId=thread_id, checkpointId="1f000000-0000-6000-8000-000000000000", values={}
    ) == ["NOT_FOUND"]
    assert await refused(threadId=thread_id, namespace="nope:1", values={}) == ["NOT_FOUND"]
    assert await refused(threadId=thread_id, values={"nope": 1}) == ["BAD_USER_INPUT"]
    assert await refused(threadId=thread_id, values={"__pregel_x": 1}) == ["BAD_USER_INPUT"]
    assert await refused(threadId=thread_id, values=[1, 2]) == ["BAD_USER_INPUT"]
    assert await refused(threadId=thread_id, values={"notes": []}, asNode="zzz") == [
        "BAD_USER_INPUT"
    ]
    assert await refused(threadId="bad id!", values={}) == ["BAD_USER_INPUT"]
    # A reducer that refuses the value (add_messages cannot read a number as a message).
    assert await refused(threadId=thread_id, values={"messages": [42]}) == ["BAD_USER_INPUT"]
    # Nothing refused was written.
    history = (await thread(http, thread_id))["checkpoints"]["edges"]
    assert all(e["node"]["source"] != "UPDATE" for e in history)


@pytest.mark.parametrize(
    "values",
    [
        {"human_feedback": "approved"},
        {"human_feedback": {"id": "f1", "feedback": "go"}},  # one record, not a list of them
        {"transitions": ["SUPERVISOR"]},
    ],
)
async def test_a_record_channel_of_the_wrong_shape_is_refused(
    server: Server, values: dict[str, Any]
) -> None:
    """The code_hero graph's record lists (human_feedback, transitions, errors, ...)
    merge by each record's `id`; what is not a list of objects is the caller's error,
    as add_messages' refusal of a number is."""
    run = await start(server.http, message="hi", wait=True)
    assert codes(await edit(server.http, threadId=run["threadId"], values=values)) == [
        "BAD_USER_INPUT"
    ]


async def test_a_thread_with_a_run_in_flight_is_busy(server: Server) -> None:
    http = server.http
    going = await start(http, graph="slow", input={"steps": []}, config={"delay": 2})
    assert going["status"] in ("PENDING", "RUNNING")
    body = await edit(http, threadId=going["threadId"], values={"steps": ["by hand"]})
    assert codes(body) == ["CONFLICT"]
    await gql(http, "mutation($id: ID!) { cancelRun(id: $id) { id } }", {"id": going["id"]})
    assert (await until_finished(http, going["id"]))["status"] == "CANCELLED"
    made = data(await edit(http, threadId=going["threadId"], values={"steps": ["by hand"]}))
    assert made["updateState"]["values"]["steps"][-1] == "by hand"


async def test_a_thread_being_edited_is_not_deleted_and_a_deleted_one_is_not_edited(
    server: Server,
) -> None:
    """deleteThread while an edit holds the thread: CONFLICT with retryAfter, nothing
    deleted; an edit of a thread whose deletion has started: NOT_FOUND; a retried
    deletion ends one that started and failed."""
    http = server.http
    thread_id = (await start(http, graph="edits", input={"notes": ["x"]}, wait=True))["threadId"]
    registry = server.gateway.manager.registry
    held = datetime.now(UTC) + timedelta(minutes=1)
    assert await registry.claim_edit(thread_id, held, seen=True) is None
    body = await gql(http, DELETE, {"id": thread_id})
    assert codes(body) == ["CONFLICT"] and body["errors"][0]["extensions"]["retryAfter"] == 1
    assert (await thread(http, thread_id))["latestCheckpoint"] is not None
    await registry.release_edit(thread_id, held)

    assert await registry.start_deletion(thread_id)  # a deletion under way
    assert codes(await edit(http, threadId=thread_id, values={"notes": ["y"]})) == ["NOT_FOUND"]
    # ... that failed there (an outage, a lost lock race): the client's retry ends it.
    assert data(await gql(http, DELETE, {"id": thread_id}))["deleteThread"]["deleted"] is True
    assert not (await server.gateway.manager.purge_thread(thread_id)).deleted


async def test_another_users_thread_looks_missing(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, idp: Issuer
) -> None:
    async with (
        secured(checkpointer_for(backend, request, tmp_path), idp) as server,
        client(server, ALICE_KEY) as alice,
        client(server, BOB_KEY) as bob,
        client(server, ROOT_KEY) as root,
    ):
        run = await start(alice, graph="slow", input={"steps": []}, config={"delay": 0}, wait=True)
        thread_id = run["threadId"]
        values = {"steps": ["bob was here"]}
        assert codes(await edit(bob, threadId=thread_id, values=values)) == ["NOT_FOUND"]
        deleted = await gql(
            bob, "mutation($id: ID!) { deleteThread(id: $id) { deleted } }", {"id": thread_id}
        )
        assert data(deleted)["deleteThread"]["deleted"] is False  # the same: nothing there
        mine = data(await edit(alice, threadId=thread_id, values={"steps": ["alice"]}))
        assert mine["updateState"]["values"]["steps"][-1] == "alice"
        admin = data(await edit(root, threadId=thread_id, values={"steps": ["root"]}))
        assert admin["updateState"]["values"]["steps"][-2:] == ["alice", "root"]
        body = await gql(bob, "query($id: ID!) { thread(id: $id) { id } }", {"id": thread_id})
        assert data(body)["thread"] is None


@pytest.mark.postgres
async def test_an_outage_refuses_threads_of_the_primary_and_keeps_edits_of_its_own(
    pg_database: str,
) -> None:
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port), pool_timeout=1, health_check_interval=0.2
        )
        settings = GatewaySettings(checkpointer=config, graphs={"edits": EDIT_GRAPH})
        async with running(create_app(AppSettings(gateway=settings))) as server:
            http = server.http
            old = await start(http, graph="edits", input={"notes": ["old"]}, wait=True)
            proxy.refuse()
            await wait_for_status(server, "DEGRADED")

            body = await edit(http, threadId=old["threadId"], values={"notes": ["x"]})
            assert codes(body) == ["UNAVAILABLE"]
            assert body["errors"][0]["extensions"]["retryAfter"] >= 1

            born = await start(http, graph="edits", input={"notes": ["new"]}, wait=True)
            made = await edit(http, threadId=born["threadId"], values={"notes": ["edited"]})
            assert data(made)["updateState"]["values"]["notes"][-1] == "edited"
            assert made["extensions"]["degraded"] is True

            proxy.forward()
            await wait_for_status(server, "HEALTHY")
            synced = await thread(http, born["threadId"])
            assert synced["latestCheckpoint"]["id"] == data(made)["updateState"]["id"]
            assert synced["status"] == "IDLE"


async def test_the_readme_examples(server: Server) -> None:
    """The documents of the README's "Editing state" section, run as written."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text.split("## Editing state", 1)[1].split("\n## ", 1)[0]
    edit_doc, fork_doc, rerun_doc, inbox_doc = re.findall(r"```graphql\n(.*?)```", section, re.S)
    http = server.http
    run = await start(http, graph="support", input={"ask": True}, wait=True)
    t = run["threadId"]
    assert run["status"] == "INTERRUPTED"
    listed = data(await gql(http, inbox_doc))["threads"]["edges"]
    assert [e["node"]["interrupts"][0]["runId"] for e in listed] == [run["id"]]
    made = data(await gql(http, edit_doc, {"t": t}))["updateState"]
    assert made["source"] == "UPDATE" and made["values"]["messages"][-1]["content"]
    history = [e["node"] for e in (await thread(http, t))["checkpoints"]["edges"]]
    past = next(c for c in history if c["next"] == ["approval"])
    fork = data(await gql(http, fork_doc, {"t": t, "past": past["id"]}))["updateState"]
    assert fork["parentId"] == past["id"] and fork["next"] == ["approval"]
    rerun = data(await gql(http, rerun_doc, {"t": t, "fork": fork["id"]}))["startRun"]
    assert rerun["status"] == "INTERRUPTED"  # the same question, asked again from the fork
    assert rerun["output"] is None


async def test_a_run_with_no_input_goes_on_from_an_edit_as_its_node(server: Server) -> None:
    """`updateState` with `asNode`, then a run naming the thread and no input: it goes on
    from the edit (`next`), as LangGraph's None input does, not from START (found by an
    outside audit: `input: {}` was the only way and re-ran the graph from its start)."""
    http = server.http
    asked = await start(http, graph="edits", input={"ask": True, "title": "t"}, wait=True)
    assert asked["status"] == "INTERRUPTED", asked
    thread_id = asked["threadId"]
    edited = data(
        await edit(http, threadId=thread_id, values={"answer": "by hand"}, asNode="approval")
    )["updateState"]
    assert edited["next"] == ["publish"]
    went_on = await start(http, threadId=thread_id, wait=True)
    assert went_on["status"] == "SUCCESS", went_on
    assert went_on["output"].get("notes") == ["draft", "published:by hand"], went_on
    # With fromCheckpointId: from that checkpoint (here the same edit), again no input.
    again = await start(http, threadId=thread_id, fromCheckpointId=edited["id"], wait=True)
    assert again["status"] == "SUCCESS", again
    assert again["output"]["notes"] == ["draft", "published:by hand"]
    # No thread, or a thread with no checkpoint: nothing to go on from.
    refused = await gql(http, START, {"input": {}})
    assert codes(refused) == ["BAD_USER_INPUT"]
    unknown = await gql(http, START, {"input": {"threadId": "no-such-thread"}})
    assert codes(unknown) == ["NOT_FOUND"]
