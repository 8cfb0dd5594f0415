"""`Thread.interrupts`: an inbox of what INTERRUPTED threads wait for, over GraphQL on
SQLite and PostgreSQL; a resume from it clears the entry; users see their own only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from code_hero.gateway import GatewaySettings
from tests.auth.issuer import Issuer
from tests.graphql.clients import codes, data, gql
from tests.graphql.conftest import SLOW_GRAPH, Server, checkpointer_for
from tests.graphql.test_auth import ALICE_KEY, BOB_KEY, ROOT_KEY, client, secured
from tests.graphql.test_update_state import EDIT_GRAPH, START, edit, start

INBOX = """query($first: Int) {
  threads(first: $first, filter: {status: INTERRUPTED}) {
    edges { node { id status interrupts { id node namespace value runId } } }
  }
}"""
QUESTIONS_GRAPH = f"{Path(__file__).with_name('questions_graph.py')}:graph"
ONE = "query($id: ID!) { thread(id: $id) { status interrupts { id node namespace runId } } }"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


@pytest.fixture
def gateway_settings(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> GatewaySettings:
    return GatewaySettings(
        checkpointer=checkpointer_for(backend, request, tmp_path),
        graphs={"slow": SLOW_GRAPH, "edits": EDIT_GRAPH, "questions": QUESTIONS_GRAPH},
    )


async def inbox(http: Any) -> dict[str, list[dict[str, Any]]]:
    """{thread id: its interrupts} of the INTERRUPTED threads the caller sees."""
    body = await gql(http, INBOX, {"first": 20})
    edges = data(body)["threads"]["edges"]
    without = await gql(http, INBOX.replace("interrupts { id node namespace value runId }", ""))
    # Each thread's list is priced as its state read plus one item.
    assert body["extensions"]["cost"] - without["extensions"]["cost"] == 20 * 2
    return {e["node"]["id"]: e["node"]["interrupts"] for e in edges}


async def test_the_inbox_across_threads_and_a_resume_from_it(server: Server) -> None:
    http = server.http
    asked = [
        await start(http, graph="edits", input={"ask": True, "title": f"t{i}"}, wait=True)
        for i in range(3)
    ]
    quiet = await start(http, graph="edits", input={"ask": False}, wait=True)
    assert {r["status"] for r in asked} == {"INTERRUPTED"} and quiet["status"] == "SUCCESS"

    listed = await inbox(http)
    assert set(listed) == {r["threadId"] for r in asked}
    for run in asked:
        (pending,) = listed[run["threadId"]]
        # Asked inside the `approval` subgraph: its node and its namespace.
        assert pending["node"] == "ask" and pending["namespace"].startswith("approval:")
        assert pending["runId"] == run["id"] and pending["id"]
        assert pending["value"]["question"] == "publish?"
    titles = {listed[r["threadId"]][0]["value"]["title"] for r in asked}
    assert titles == {"t0", "t1", "t2"}
    one = data(await gql(http, ONE, {"id": quiet["threadId"]}))["thread"]
    assert one == {"status": "IDLE", "interrupts": []}

    # Answer the first from the inbox.
    answered = asked[0]["threadId"]
    resumed = await start(http, threadId=answered, resume="yes", wait=True)
    assert resumed["status"] == "SUCCESS"
    assert resumed["output"]["notes"] == ["draft", "published:yes"]
    after = await inbox(http)
    assert set(after) == {asked[1]["threadId"], asked[2]["threadId"]}
    assert data(await gql(http, ONE, {"id": answered}))["thread"]["interrupts"] == []


async def test_an_edit_of_an_interrupted_thread(server: Server) -> None:
    """LangGraph drops the pending interrupt with the edit: the thread is IDLE, out of the
    inbox, and a new run starts from the edited state."""
    http = server.http
    asked = await start(http, graph="edits", input={"ask": True, "title": "draft"}, wait=True)
    thread_id = asked["threadId"]
    assert thread_id in await inbox(http)
    made = data(await edit(http, threadId=thread_id, values={"title": "fixed", "ask": False}))
    assert made["updateState"]["values"]["title"] == "fixed"
    assert data(await gql(http, ONE, {"id": thread_id}))["thread"] == {
        "status": "IDLE",
        "interrupts": [],
    }
    assert thread_id not in await inbox(http)
    again = await start(http, threadId=thread_id, graph="edits", input={"notes": []}, wait=True)
    assert again["status"] == "SUCCESS" and again["output"]["title"] == "fixed"
    assert again["output"]["notes"][-1] == "published:none"


async def test_a_resume_that_answers_no_question_is_refused(server: Server) -> None:
    """A null answer (LangGraph's "no resume") or, with two questions pending, an answer
    that is not a map of their interrupt ids is BAD_USER_INPUT and starts nothing: the
    thread keeps its questions, and a proper answer resumes it. Before, the run ended
    ERROR (an UnboundLocalError, or LangGraph's "must specify the interrupt id") and took
    the thread's questions with it: every later resume answered CONFLICT."""
    http = server.http
    asked = await start(http, graph="edits", input={"ask": True, "title": "t"}, wait=True)
    both = await start(http, graph="questions", input={}, wait=True)
    assert asked["status"] == both["status"] == "INTERRUPTED"
    (one,) = (await inbox(http))[asked["threadId"]]
    two = {p["node"]: p["id"] for p in (await inbox(http))[both["threadId"]]}
    assert set(two) == {"a", "b"}

    for thread_id, resume in (
        (asked["threadId"], None),
        (both["threadId"], None),
        (both["threadId"], "yes"),
        (both["threadId"], {"approved": True}),
        (both["threadId"], {two["a"]: "A", "other": "B"}),
    ):
        body = await gql(http, START, {"input": {"threadId": thread_id, "resume": resume}})
        assert codes(body) == ["BAD_USER_INPUT"], (resume, body)
        assert "interrupt id" in body["errors"][0]["message"], body
    # So too from a past checkpoint: the questions pending there (here the newest's).
    newest = data(
        await gql(
            http,
            "query($t: ID!) { thread(id: $t) { checkpoints(first: 1) { edges { node { id } } } } }",
            {"t": both["threadId"]},
        )
    )["thread"]["checkpoints"]["edges"][0]["node"]["id"]
    at = {"threadId": both["threadId"], "resume": "yes", "fromCheckpointId": newest}
    body = await gql(http, START, {"input": at})
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert "interrupt id" in body["errors"][0]["message"], body
    assert data(await gql(http, ONE, {"id": asked["threadId"]}))["thread"]["status"] == (
        "INTERRUPTED"
    )
    pending = (await inbox(http))[both["threadId"]]
    assert {p["id"] for p in pending} == set(two.values())
    runs = data(await gql(http, "{ runs(first: 100) { edges { node { id } } } }"))["runs"]
    assert len(runs["edges"]) == 2  # the refused resumes started nothing

    # A null answer is given by the interrupt's id; two answers by theirs.
    resumed = await start(http, threadId=asked["threadId"], resume={one["id"]: None}, wait=True)
    assert resumed["status"] == "SUCCESS"
    assert resumed["output"]["notes"][-1] == "published:None"
    answered = await start(
        http, threadId=both["threadId"], resume={two["a"]: "A", two["b"]: "B"}, wait=True
    )
    assert answered["status"] == "SUCCESS"
    assert sorted(answered["output"]["answers"]) == ["a:A", "b:B"]


async def test_a_copy_or_a_thread_whose_run_is_gone_waits_on_its_own_graph(
    server: Server,
) -> None:
    """An interrupted thread with no INTERRUPTED run (a copy has no runs; deleteRun took
    the one that asked) still lists its question and resumes on its graph, the one its
    metadata names. Before, both read the state with the default graph: `interrupts` was
    empty, and a resume ran the default graph, SUCCESS with nothing answered."""
    http = server.http
    asked = await start(http, graph="edits", input={"ask": True, "title": "t"}, wait=True)
    copy = await gql(
        http, "mutation($id: ID!) { copyThread(id: $id) { id } }", {"id": asked["threadId"]}
    )
    copied = data(copy)["copyThread"]["id"]
    deleted = await gql(
        http, "mutation($id: ID!) { deleteRun(id: $id) { deleted } }", {"id": asked["id"]}
    )
    assert data(deleted)["deleteRun"]["deleted"] is True

    listed = await inbox(http)
    for thread_id in (copied, asked["threadId"]):
        (pending,) = listed[thread_id]
        assert pending["node"] == "ask" and pending["runId"] is None
        assert pending["value"] == {"question": "publish?", "title": "t"}
        resumed = await start(http, threadId=thread_id, resume="yes", wait=True)
        assert resumed["status"] == "SUCCESS", resumed
        assert resumed["output"]["notes"] == ["draft", "published:yes"]
    assert await inbox(http) == {}


@pytest.mark.parametrize("earlier_run", [True, False], ids=["a run before", "its only run"])
async def test_a_made_thread_whose_asking_run_is_gone_waits_on_the_graph_it_last_ran(
    server: Server, earlier_run: bool
) -> None:
    """A thread made by createThread has no graph in its metadata: with its interrupted
    run deleted, its question is read, and answered, on the graph its runs ran: an
    earlier run's, or with none left, the one its latest checkpoint names (`graph_id`,
    as LangGraph's server names it). Before: the default graph, `interrupts` empty and
    a resume that answered nothing."""
    http = server.http
    made = await gql(http, 'mutation { createThread(input: {threadId: "made"}) { id } }')
    assert data(made)["createThread"]["id"] == "made"
    if earlier_run:
        done = await start(http, threadId="made", graph="edits", input={"title": "t"}, wait=True)
        assert done["status"] == "SUCCESS", done
    asked = await start(
        http, threadId="made", graph="edits", input={"ask": True, "title": "t"}, wait=True
    )
    assert asked["status"] == "INTERRUPTED", asked
    deleted = await gql(
        http, "mutation($id: ID!) { deleteRun(id: $id) { deleted } }", {"id": asked["id"]}
    )
    assert data(deleted)["deleteRun"]["deleted"] is True
    (pending,) = (await inbox(http))["made"]
    assert pending["node"] == "ask" and pending["runId"] is None
    resumed = await start(http, threadId="made", resume="yes", wait=True)
    assert resumed["status"] == "SUCCESS", resumed
    assert resumed["output"]["notes"][-1] == "published:yes"  # the edits graph's answer
    assert await inbox(http) == {}


async def test_users_see_their_own_inbox(
    backend: str, idp: Issuer, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with (
        secured(checkpointer_for(backend, request, tmp_path), idp) as server,
        client(server, ALICE_KEY) as alice,
        client(server, BOB_KEY) as bob,
        client(server, ROOT_KEY) as root,
    ):
        # The built-in graph asks for approval in its root graph.
        asked = await start(
            alice, message="build a fastapi app", config={"require_approval": True}, wait=True
        )
        assert asked["status"] == "INTERRUPTED"
        mine = await inbox(alice)
        (pending,) = mine[asked["threadId"]]
        assert pending["node"] == "SUPERVISOR" and pending["namespace"] == ""
        assert pending["runId"] == asked["id"]
        assert await inbox(bob) == {}
        assert (await inbox(root))[asked["threadId"]] == [pending]
        refused = await gql(
            bob, START, {"input": {"threadId": asked["threadId"], "resume": {"approved": True}}}
        )
        assert codes(refused) == ["NOT_FOUND"]
        resumed = await start(
            alice, threadId=asked["threadId"], resume={"approved": True}, wait=True
        )
        assert resumed["status"] == "SUCCESS"
        assert await inbox(alice) == {} and await inbox(root) == {}


async def test_a_fork_at_a_checkpoint_whose_question_was_answered_there_is_refused(
    server: Server,
) -> None:
    """The answer LangGraph keeps at a checkpoint (the asking task's writes) would be
    reused by a resume forked there, whatever it answers: refused, CONFLICT, rather than
    run with the new answer silently dropped (found by an outside audit)."""
    http = server.http
    asked = await start(http, graph="edits", input={"ask": True, "title": "t"}, wait=True)
    assert asked["status"] == "INTERRUPTED", asked
    thread_id = asked["threadId"]
    latest = await gql(
        http, "query($id: ID!) { thread(id: $id) { latestCheckpoint { id } } }", {"id": thread_id}
    )
    at = data(latest)["thread"]["latestCheckpoint"]["id"]
    first = await start(http, threadId=thread_id, resume="yes", wait=True)
    assert first["status"] == "SUCCESS", first
    forked = await gql(
        http,
        START,
        {"input": {"threadId": thread_id, "resume": "no", "fromCheckpointId": at, "wait": True}},
    )
    assert codes(forked) == ["CONFLICT"], forked
    assert "waits for no answer" in forked["errors"][0]["message"]


async def test_a_resume_naming_another_graph_is_refused(server: Server) -> None:
    """A resume carries on the graph that asked: one naming a graph that finds no
    question in the thread's state is refused, the question kept (found by an outside
    audit: it ran the other graph, nothing answered, and left the thread IDLE with its
    question still pending and unanswerable)."""
    http = server.http
    asked = await start(http, graph="edits", input={"ask": True, "title": "t"}, wait=True)
    assert asked["status"] == "INTERRUPTED", asked
    thread_id = asked["threadId"]
    other = await gql(
        http, START, {"input": {"threadId": thread_id, "resume": "yes", "graph": "slow"}}
    )
    assert codes(other) == ["BAD_USER_INPUT"], other
    assert "leave graph out" in other["errors"][0]["message"]
    (pending,) = (await inbox(http))[thread_id]
    assert pending["node"] == "ask"
    same = await start(http, threadId=thread_id, resume="yes", graph="edits", wait=True)
    assert same["status"] == "SUCCESS", same
