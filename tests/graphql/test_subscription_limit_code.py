"""A socket's subscription limit, hit, is a GraphQL error with an extensions.code.

Every error the gateway answers carries a code (README: Errors); the refusal of
a subscription past CODE_HERO_MAX_SUBSCRIPTIONS came as a bare
{"message": "Subscription limit reached"} on both WebSocket protocols, so a
client switching on the code could not tell it from anything else.
"""

from __future__ import annotations

from code_hero.limits import Limits
from tests.graphql.clients import LegacyWS, TransportWS, data, gql
from tests.graphql.conftest import Starter

CODES = {"BAD_USER_INPUT", "RATE_LIMITED", "QUERY_TOO_COMPLEX", "CONFLICT", "UNAVAILABLE"}
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
            codes = [e.get("extensions", {}).get("code") for e in refused["payload"]]
            assert len(codes) == 1 and codes[0] in CODES, refused
        async with LegacyWS.connect(server.ws_url) as legacy:
            await legacy.start("1", QUERY, variables)
            await legacy.start("2", QUERY, variables)
            _, error = await legacy.collect("2")
            assert error["type"] == "error"
            assert error["payload"].get("extensions", {}).get("code") in CODES, error
