"""A socket's subscription limit, hit, is a GraphQL error with an extensions.code.

Every error the gateway answers carries a code (README: Errors); the refusal of
a subscription past CODE_HERO_MAX_SUBSCRIPTIONS came as a bare
{"message": "Subscription limit reached"} on both WebSocket protocols, so a
client switching on the code could not tell it from anything else. It is
BAD_USER_INPUT, as every other fixed limit of a request is (a page past 100, a
message too long), with the limit in `extensions.maxSubscriptions`.
"""

from __future__ import annotations

from code_hero.limits import Limits
from tests.graphql.clients import LegacyWS, TransportWS, data, gql
from tests.graphql.conftest import Starter

QUERY = "subscription($t: ID!) { threadEvents(threadId: $t) { seq } }"


async def test_the_refusal_has_a_code_on_both_protocols(start: Starter) -> None:
    async with start(Limits(max_subscriptions=1)) as server:
        start_run = 'mutation { startRun(input: {message: "hi", wait: true}) { threadId } }'
        variables = {"t": data(await gql(server.http, start_run))["startRun"]["threadId"]}
        async with TransportWS.connect(server.ws_url) as ws:
            await ws.subscribe("1", QUERY, variables)
            await ws.subscribe("2", QUERY, variables)
            _, refused = await ws.collect("2")
            assert refused is not None and refused["type"] == "error"
            [error] = refused["payload"]
            assert error["extensions"] == {"code": "BAD_USER_INPUT", "maxSubscriptions": 1}
            assert "limit" in error["message"]
        async with LegacyWS.connect(server.ws_url) as legacy:
            await legacy.start("1", QUERY, variables)
            await legacy.start("2", QUERY, variables)
            _, error = await legacy.collect("2")
            assert error["type"] == "error"
            assert error["payload"]["extensions"] == {
                "code": "BAD_USER_INPUT",
                "maxSubscriptions": 1,
            }
            # The socket serves on: the running one stops as it should.
            await legacy.stop("1")
            _, end = await legacy.collect("1")
            assert end["type"] == "complete"


async def test_a_malformed_restart_of_a_running_id_frees_its_place(start: Starter) -> None:
    """A start reusing a running id stops that operation first, malformed or not (as
    Strawberry and the protocol's reference server do): its `error` ends the id for
    the client, and the operation held a place of the socket's limit (review)."""
    async with start(Limits(max_subscriptions=1)) as server:
        run = 'mutation { startRun(input: {message: "hi", wait: true}) { threadId } }'
        variables = {"t": data(await gql(server.http, run))["startRun"]["threadId"]}
        async with LegacyWS.connect(server.ws_url) as ws:
            await ws.start("a", QUERY, variables)
            await ws.send({"id": "a", "type": "start", "payload": {"query": None}})
            # Over the limit only if "a" still runs: else the query is refused for
            # being a query (legacy graphql-ws runs subscriptions only).
            await ws.start("b", "{ health { status } }")
            _, answer = await ws.collect("b")
            assert answer["type"] == "error"
            assert "maxSubscriptions" not in answer["payload"].get("extensions", {}), answer
