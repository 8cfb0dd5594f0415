"""Authentication and per-user isolation over HTTP, SSE and both WebSocket protocols.

Real credentials throughout: API keys, HS256 tokens signed with the shared
secret, RS256 and ES256 tokens whose keys are in a JWKS file. The isolation
walk runs every query, mutation and subscription of the contract as a second
user, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from code_hero.app import create_app
from code_hero.auth import AccessSettings, AuthSettings, JwtSettings, parse_api_keys
from code_hero.config import CheckpointerConfig
from code_hero.gateway import GatewaySettings
from code_hero.settings import AppSettings
from tests.auth.issuer import SECRET, Issuer
from tests.graphql.clients import LegacyWS, TransportWS, codes, data, gql, sse
from tests.graphql.conftest import SLOW_GRAPH, Server, checkpointer_for, running

ALICE_KEY = "alice-0123456789abcdef"
MISSING_RUN = "00000000-0000-4000-8000-000000000000"  # a well-formed run id no run has
BOB_KEY = "bob-0123456789abcdef"
ROOT_KEY = "root-0123456789abcdef"
KEYS = f"{ALICE_KEY}=alice,{BOB_KEY}=bob,{ROOT_KEY}=root:admin"

START = """mutation($input: StartRunInput!) {
  startRun(input: $input) { id threadId userId status thread { id userId } }
}"""
FAST = {"graph": "slow", "message": "hi", "config": {"delay": 0}, "wait": True}

Run = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


def auth_settings(idp: Issuer) -> AuthSettings:
    return AuthSettings(
        api_keys=parse_api_keys(KEYS),
        jwt=JwtSettings(secret=SECRET, jwks=str(idp.jwks), admin_claim="role=admin"),
    )


@asynccontextmanager
async def secured(
    checkpointer: CheckpointerConfig,
    idp: Issuer,
    *,
    access: AccessSettings | None = None,
    **options: Any,
) -> AsyncIterator[Server]:
    """A server that needs credentials (GraphiQL off, as it defaults to with auth on)."""
    settings = AppSettings(
        gateway=GatewaySettings(
            checkpointer=checkpointer,
            graphs={"slow": SLOW_GRAPH},
            access=access or AccessSettings(),
        ),
        auth=auth_settings(idp),
        graphiql=False,
        **options,
    )
    async with running(create_app(settings)) as server:
        yield server


@asynccontextmanager
async def client(server: Server, token: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=20) as http:
        yield http


def over_http(http: httpx.AsyncClient) -> tuple[Run, Run]:
    """(operations, subscriptions) over HTTP and SSE."""

    async def run(query: str, variables: dict[str, Any]) -> dict[str, Any]:
        return await gql(http, query, variables)

    async def subscribe(query: str, variables: dict[str, Any]) -> dict[str, Any]:
        events = await sse(http, query, variables)
        first: dict[str, Any] = events[0][1]
        return first

    return run, subscribe


def over_transport_ws(ws: TransportWS) -> Run:
    count = 0

    async def run(query: str, variables: dict[str, Any]) -> dict[str, Any]:
        nonlocal count
        count += 1
        await ws.subscribe(str(count), query, variables)
        payloads, end = await ws.collect(str(count), limit=1)
        if end is not None and end["type"] == "error":
            return {"errors": end["payload"]}
        return payloads[0]

    return run


def over_legacy_ws(ws: LegacyWS) -> Run:
    count = 0

    async def run(query: str, variables: dict[str, Any]) -> dict[str, Any]:
        nonlocal count
        count += 1
        await ws.start(str(count), query, variables)
        while True:
            message = await ws.receive()
            if message.get("id") != str(count) or message["type"] == "ka":
                continue
            if message["type"] == "error":
                return {"errors": [message["payload"]]}
            payload: dict[str, Any] = message["payload"]
            return payload

    return run


# Every operation that names another user's thread, run or checkpoint; each must
# answer exactly as it does for ids that do not exist.
LOOKS_MISSING = [
    ("query($t: ID!) { thread(id: $t) { id } }", False),
    # The page is read with the thread: it must not show with the thread hidden.
    ("query($t: ID!) { thread(id: $t) { checkpoints { edges { node { id values } } } } }", False),
    ("query($t: ID!) { checkpoint(threadId: $t) { id } }", False),
    ("query($t: ID!, $c: ID) { checkpoint(threadId: $t, id: $c) { id } }", False),
    ("query($r: ID!) { run(id: $r) { id thread { id } } }", False),
    ("query($t: ID!) { runs(filter: {threadId: $t}) { edges { node { id } } } }", False),
    ("mutation($r: ID!) { cancelRun(id: $r) { id } }", False),
    ("mutation($r: ID!) { deleteRun(id: $r) { runId deleted } }", False),
    (
        "mutation($t: ID!) { deleteThread(id: $t) "
        "{ threadId deleted checkpointsDeleted runsDeleted } }",
        False,
    ),
    ("subscription($r: ID!) { runEvents(runId: $r) { seq } }", True),
    ("subscription($t: ID!) { threadEvents(threadId: $t) { seq } }", True),
]


def _same(body: dict[str, Any], ids: dict[str, str]) -> str:
    text = json.dumps(body, sort_keys=True)
    for name, value in ids.items():
        text = text.replace(value, name.upper())
    return text


async def walk_as_stranger(
    run: Run | None, subscribe: Run, theirs: dict[str, str], own_thread: str
) -> None:
    """Everything a second user can ask about the first user's data: nothing shows.

    Without `run` (legacy graphql-ws carries subscriptions only), the subscriptions.
    """
    missing = {"t": "missing-thread", "r": MISSING_RUN, "c": "missing-checkpoint"}
    for query, is_subscription in LOOKS_MISSING:
        ask = subscribe if is_subscription else run
        if ask is None:
            continue
        seen, absent = await ask(query, theirs), await ask(query, missing)
        assert _same(seen, theirs) == _same(absent, missing), (query, seen, absent)
        assert not set(codes(seen)) - {"NOT_FOUND"}, seen
    if run is None:
        return
    # What a user lists is its own, the owner part of the query.
    listed = data(
        await run(
            "{ health { status } graphs { name } "
            "threads(first: 100) { edges { node { id userId } } } "
            "runs(first: 100) { edges { node { threadId thread { id } events { seq } } } } }",
            {},
        )
    )
    assert listed["health"]["status"] == "HEALTHY" and listed["graphs"]  # shared, not per user
    assert [e["node"]["id"] for e in listed["threads"]["edges"]] == [own_thread]
    assert {e["node"]["threadId"] for e in listed["runs"]["edges"]} == {own_thread}
    assert all(e["node"]["events"] for e in listed["runs"]["edges"])
    # Naming another user is refused; running on another's thread is NOT_FOUND.
    for query in (
        '{ threads(filter: {userId: "alice"}) { edges { node { id } } } }',
        '{ runs(filter: {userId: "alice"}) { edges { node { id } } } }',
        'mutation { startRun(input: {message: "x", userId: "alice"}) { id } }',
    ):
        assert codes(await run(query, {})) == ["FORBIDDEN"], query
    taken = await run(
        'mutation($t: ID!) { startRun(input: {threadId: $t, message: "x", graph: "slow"}) { id } }',
        theirs,
    )
    assert codes(taken) == ["NOT_FOUND"]


async def test_a_second_user_sees_nothing_of_the_first(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, idp: Issuer
) -> None:
    checkpointer = checkpointer_for(backend, request, tmp_path)
    async with (
        secured(checkpointer, idp) as server,
        client(server, ALICE_KEY) as alice,
        client(server, idp.token("bob")) as bob,
        client(server, ROOT_KEY) as root,
    ):
        # Alice's thread: created by her, with her user id whatever the request says.
        mine = data(await gql(alice, START, {"input": FAST}))["startRun"]
        assert mine["userId"] == "alice" and mine["thread"] == {
            "id": mine["threadId"],
            "userId": "alice",
        }
        again = await gql(
            alice, START, {"input": {**FAST, "threadId": mine["threadId"], "userId": "alice"}}
        )
        assert data(again)["startRun"]["userId"] == "alice"
        latest = data(
            await gql(
                alice,
                "query($t: ID!) { thread(id: $t) { latestCheckpoint { id } "
                "checkpoints { edges { node { id } } } runs { edges { node { id } } } } }",
                {"t": mine["threadId"]},
            )
        )["thread"]
        assert len(latest["runs"]["edges"]) == 2 and latest["checkpoints"]["edges"]
        theirs = {"t": mine["threadId"], "r": mine["id"], "c": latest["latestCheckpoint"]["id"]}
        bobs = data(await gql(bob, START, {"input": FAST}))["startRun"]
        assert bobs["userId"] == "bob"

        # Bob walks it over HTTP + SSE (HS256 token), graphql-transport-ws (RS256 token,
        # bare, in connection_init) and legacy graphql-ws (API key on the upgrade).
        run, subscribe = over_http(bob)
        await walk_as_stranger(run, subscribe, theirs, bobs["threadId"])
        rs256 = {"authorization": idp.token("bob", alg="RS256")}
        async with TransportWS.connect(server.ws_url, payload=rs256) as ws:
            ops = over_transport_ws(ws)
            await walk_as_stranger(ops, ops, theirs, bobs["threadId"])
        headers = {"authorization": f"Bearer {BOB_KEY}"}
        async with LegacyWS.connect(server.ws_url, headers=headers) as legacy:
            await walk_as_stranger(None, over_legacy_ws(legacy), theirs, bobs["threadId"])

        # Alice's data is untouched, and hers to follow.
        async with TransportWS.connect(
            server.ws_url, payload={"authorization": f"Bearer {ALICE_KEY}"}
        ) as ws:
            await ws.subscribe(
                "e", "subscription($r: ID!) { runEvents(runId: $r) { seq } }", {"r": mine["id"]}
            )
            events, end = await ws.collect("e")
            assert events and end is not None and end["type"] == "complete"
        owned = await gql(
            alice, "query($t: ID!) { thread(id: $t) { runs { edges { node { id } } } } }", theirs
        )
        assert len(data(owned)["thread"]["runs"]["edges"]) == 2

        # The administrator sees and acts on everything; an owner never changes.
        every = data(await gql(root, "{ threads { edges { node { id userId } } } }"))["threads"]
        assert {e["node"]["userId"] for e in every["edges"]} == {"alice", "bob"}
        hers = await gql(root, '{ threads(filter: {userId: "alice"}) { edges { node { id } } } }')
        assert [e["node"]["id"] for e in data(hers)["threads"]["edges"]] == [mine["threadId"]]
        seen = await gql(
            root,
            "query($t: ID!, $r: ID!) { thread(id: $t) { id } run(id: $r) { id } "
            "checkpoint(threadId: $t) { id } }",
            theirs,
        )
        assert all(data(seen).values())
        helped = data(await gql(root, START, {"input": {**FAST, "threadId": mine["threadId"]}}))
        assert helped["startRun"]["userId"] == "root"
        assert helped["startRun"]["thread"]["userId"] == "alice"
        followed = await sse(root, "subscription($r: ID!) { runEvents(runId: $r) { seq } }", theirs)
        assert followed[-1] == ("complete", None)
        gone = await gql(
            root, "mutation($t: ID!) { deleteThread(id: $t) { deleted runsDeleted } }", theirs
        )
        assert data(gone)["deleteThread"] == {"deleted": True, "runsDeleted": 3}
        assert (
            data(await gql(alice, "query($t: ID!) { thread(id: $t) { id } }", theirs))["thread"]
            is None
        )


QUERY = {"query": "{ graphs { name } }"}


async def test_credentials_are_required_and_checked(
    tmp_path: Path, request: pytest.FixtureRequest, idp: Issuer
) -> None:
    async with secured(checkpointer_for("sqlite", request, tmp_path), idp) as server:
        http = server.http
        good = {
            "API key": ALICE_KEY,
            "HS256": idp.token("ann"),
            "RS256": idp.token("ann", alg="RS256"),
            "ES256": idp.token("ann", alg="ES256"),
        }
        for name, token in good.items():
            answer = await http.post(
                "/graphql", json=QUERY, headers={"authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 200 and "errors" not in answer.json(), name
        bad = {
            "no credentials": None,
            "not Bearer": f"Basic {ALICE_KEY}",
            "unknown key": "Bearer not-a-key-0123456789",
            "malformed token": "Bearer eyJ.garbage.here",
            "expired token": f"Bearer {idp.token('ann', ttl=-3600)}",
            "forged signature": f"Bearer {idp.token('ann')[:-4]}AAAA",
        }
        for name, header in bad.items():
            headers = {} if header is None else {"authorization": header}
            answer = await http.post("/graphql", json=QUERY, headers=headers)
            assert answer.status_code == 401, name
            assert answer.headers["www-authenticate"].startswith("Bearer")
            assert codes(answer.json()) == ["UNAUTHENTICATED"], name
            assert "data" not in answer.json()
        expired = await http.post(
            "/graphql",
            json=QUERY,
            headers={"authorization": f"Bearer {idp.token('ann', ttl=-3600)}"},
        )
        assert expired.json()["errors"][0]["message"] == "the token has expired"
        # GET queries and SSE subscriptions go through the same door.
        assert (
            await http.get("/graphql", params={"query": "{ graphs { name } }"})
        ).status_code == 401
        streamed = await http.post(
            "/graphql",
            json={"query": 'subscription { threadEvents(threadId: "x") { seq } }'},
            headers={"accept": "text/event-stream"},
        )
        assert streamed.status_code == 401
        # /healthz stays open for load balancers.
        assert (await http.get("/healthz")).status_code == 200

        # WebSockets: closed with 4403 at connection_init, before any operation.
        for payload in (
            {},
            {"authorization": "Bearer nope-nope-nope-nope"},
            {"authorization": 42},
            {"authorization": idp.token("ann", ttl=-3600)},
        ):
            async with TransportWS.connect(server.ws_url, init=False) as ws:
                await ws.send({"type": "connection_init", "payload": payload})
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.receive(seconds=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403, payload
        async with TransportWS.connect(
            server.ws_url, init=False, headers={"authorization": "Bearer wrong-key-0123456789"}
        ) as ws:  # a bad header is not rescued by a good payload
            await ws.send({"type": "connection_init", "payload": {"authorization": ALICE_KEY}})
            with pytest.raises(ConnectionClosed) as closed:
                await ws.receive(seconds=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        async with TransportWS.connect(server.ws_url, init=False) as ws:  # no init: no operation
            await ws.subscribe("1", "{ graphs { name } }")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.receive(seconds=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        async with LegacyWS.connect(server.ws_url, init=False) as legacy:
            await legacy.send({"type": "connection_init", "payload": {"authorization": "Bearer x"}})
            refused = await legacy.receive()
            assert refused["type"] == "connection_error"
            assert refused["payload"]["code"] == "UNAUTHENTICATED"
            with pytest.raises(ConnectionClosed) as closed:
                await legacy.receive(seconds=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
        # Accepted: the header on the upgrade, or the payload with or without "Bearer".
        for options in (
            {"headers": {"authorization": f"Bearer {ALICE_KEY}"}},
            {"payload": {"authorization": ALICE_KEY}},
            {"payload": {"Authorization": f"Bearer {idp.token('ann', alg='ES256')}"}},
        ):
            async with TransportWS.connect(server.ws_url, **options) as ws:
                body = await over_transport_ws(ws)("{ graphs { name } }", {})
                assert data(body)["graphs"], options


async def test_rate_limit_on_mutations(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, idp: Issuer
) -> None:
    from code_hero.auth import RateLimit

    access = AccessSettings(rate_limit=RateLimit(3, 60.0))
    async with (
        secured(checkpointer_for(backend, request, tmp_path), idp, access=access) as server,
        client(server, ALICE_KEY) as alice,
    ):
        delete = f'mutation {{ deleteRun(id: "{MISSING_RUN}") {{ deleted }} }}'
        for _ in range(3):
            assert data(await gql(alice, delete))["deleteRun"]["deleted"] is False
        limited = await gql(alice, delete)
        assert limited["data"] is None and codes(limited) == ["RATE_LIMITED"]
        error = limited["errors"][0]
        assert error["extensions"]["retryAfter"] == 20 and "retry in 20 s" in error["message"]
        cancel = f'mutation {{ cancelRun(id: "{MISSING_RUN}") {{ id }} }}'
        assert codes(await gql(alice, cancel)) == ["RATE_LIMITED"]
        assert data(await gql(alice, "{ threads { edges { node { id } } } }"))  # reads are free
        # Another user has a bucket of its own, over a WebSocket as well.
        async with TransportWS.connect(server.ws_url, payload={"authorization": BOB_KEY}) as ws:
            ops = over_transport_ws(ws)
            for _ in range(3):
                assert data(await ops(delete, {}))
            refused = await ops(delete, {})
            assert codes(refused) == ["RATE_LIMITED"]
            assert refused["errors"][0]["extensions"]["retryAfter"] == 20


async def test_the_hook_can_deny(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, idp: Issuer
) -> None:
    from tests.graphql import auth_hook

    auth_hook.ASKED.clear()
    access = AccessSettings(hook="tests.graphql.auth_hook:authorize")
    async with (
        secured(checkpointer_for(backend, request, tmp_path), idp, access=access) as server,
        client(server, ALICE_KEY) as alice,
        client(server, BOB_KEY) as bob,
        client(server, idp.token("boss", role="admin")) as boss,
    ):
        mine = data(await gql(alice, START, {"input": FAST}))["startRun"]
        assert ("run.create", "alice", None) in auth_hook.ASKED
        delete = "mutation($t: ID!) { deleteThread(id: $t) { deleted } }"
        denied = await gql(alice, delete, {"t": mine["threadId"]})
        assert codes(denied) == ["FORBIDDEN"]
        assert codes(await gql(bob, START, {"input": FAST})) == ["FORBIDDEN"]
        bobs = data(await gql(bob, START, {"input": {"message": "hi", "wait": True}}))["startRun"]
        # A denied read is missing data, not an error.
        hidden = await gql(
            bob,
            "query($t: ID!) { checkpoint(threadId: $t) { id } thread(id: $t) { values "
            "checkpoints { edges { node { id } } } } }",
            {"t": bobs["threadId"]},
        )
        assert data(hidden) == {
            "checkpoint": None,
            "thread": {"values": None, "checkpoints": {"edges": []}},
        }
        assert data(await gql(boss, delete, {"t": mine["threadId"]}))["deleteThread"]["deleted"]
        assert ("thread.delete", "boss", mine["threadId"]) in auth_hook.ASKED


async def test_sockets_and_streams_end_when_their_token_expires(
    tmp_path: Path, request: pytest.FixtureRequest, idp: Issuer
) -> None:
    # Authenticated once (at connection_init, or as the SSE request came): without an
    # end at the token's expiry, a socket or a stream would outlive it for good.
    auth = auth_settings(idp)
    settings = AppSettings(
        gateway=GatewaySettings(checkpointer=checkpointer_for("sqlite", request, tmp_path)),
        auth=replace(auth, jwt=replace(auth.jwt, leeway=1)),
        graphiql=False,
    )
    async with running(create_app(settings)) as server:
        exp = int(time.time()) + 3  # 2-3 s ahead, and 1 s of leeway after it
        token = idp.token("ann", exp=exp)
        async with (
            TransportWS.connect(server.ws_url, payload={"authorization": token}) as jwt_socket,
            TransportWS.connect(server.ws_url, payload={"authorization": ALICE_KEY}) as key_socket,
            LegacyWS.connect(server.ws_url, payload={"authorization": token}) as legacy,
            client(server, token) as http,
        ):
            made = await gql(http, "mutation { createThread(input: {}) { id } }")
            thread = data(made)["createThread"]["id"]
            follow = f'subscription {{ threadEvents(threadId: "{thread}") {{ seq }} }}'
            await jwt_socket.subscribe("1", follow)  # the user's own thread: no events yet
            await legacy.start("1", follow)
            streamed = asyncio.create_task(sse(http, follow))
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # no event comes: the close does
                    await jwt_socket.next_message(seconds=15)
            assert time.time() >= exp + 1  # not before the token stopped verifying
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (
                4403,
                "the token has expired",
            )
            while (message := await legacy.receive(seconds=15))["type"] == "ka":
                pass
            assert message == {
                "type": "connection_error",
                "payload": {"message": "the token has expired", "code": "UNAUTHENTICATED"},
            }
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # its operation's `complete`, then the close
                    assert (await legacy.receive(seconds=15)) == {"type": "complete", "id": "1"}
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
            # The stream stops with no `complete` (as at a server's stop): its client's
            # next request is refused.
            assert await asyncio.wait_for(streamed, 15) == []
            assert (
                await http.post("/graphql", json={"query": "{ graphs { name } }"})
            ).status_code == 401
            # An API key does not expire: that socket serves on.
            await key_socket.send({"type": "ping"})
            assert await key_socket.receive() == {"type": "pong"}


async def test_abuse_settings(tmp_path: Path, request: pytest.FixtureRequest, idp: Issuer) -> None:
    from code_hero.settings import Limits

    app = "https://app.example"
    async with (
        secured(
            checkpointer_for("sqlite", request, tmp_path),
            idp,
            limits=Limits(introspection=False, field_suggestions=False),
            cors_origins=(app,),
        ) as server,
        client(server, ALICE_KEY) as alice,
    ):
        introspect = await gql(alice, "{ __schema { types { name } } }")
        assert (
            set(codes(introspect)) == {"BAD_USER_INPUT"}
            and "introspection" in json.dumps(introspect).lower()
        )
        assert data(await gql(alice, "{ __typename }")) == {"__typename": "Query"}
        for typo in (
            "{ threds { edges { node { id } } } }",
            '{ thread(idd: "x") { id } }',
            "{ runs(filter: {status: SUCCES}) { edges { node { id } } } }",
        ):
            body = await gql(alice, typo)
            assert codes(body) and "did you mean" not in json.dumps(body).lower(), body
        # GraphiQL is off: its page is a 404.
        page = await alice.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 404
        # CORS: the allowed origin gets its headers, any other none.
        preflight = {
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization",
        }
        ok = await alice.options("/graphql", headers={"origin": app, **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == app
        evil = await alice.options(
            "/graphql", headers={"origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in evil.headers
        posted = await alice.post(
            "/graphql", json=QUERY, headers={"origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in posted.headers
        # WebSockets from other origins are refused at the handshake.
        payload = {"authorization": ALICE_KEY}
        async with TransportWS.connect(server.ws_url, payload=payload, origin=app) as ws:
            assert data(await over_transport_ws(ws)("{ graphs { name } }", {}))
        with pytest.raises(Exception, match="403"):
            async with TransportWS.connect(
                server.ws_url, payload=payload, origin="https://evil.example"
            ):
                pass
    (tmp_path / "open").mkdir()
    open_mode = GatewaySettings(checkpointer=checkpointer_for("sqlite", request, tmp_path / "open"))
    async with running(create_app(AppSettings(gateway=open_mode))) as server:
        # Open mode keeps suggestions on by default.
        body = await gql(server.http, "{ threds { edges { node { id } } } }")
        assert "Did you mean" in body["errors"][0]["message"]
