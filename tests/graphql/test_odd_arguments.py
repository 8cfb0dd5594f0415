"""Arguments that are present but empty or of the wrong kind, named honestly.

- `startRun(input: {graph: ""})` ran the default graph, as if no graph were
  named; an empty name is no graph: BAD_USER_INPUT naming it, never a silent
  default, and no run starts.
- A malformed webhook id was refused as "id must be a run id", and a malformed
  delivery cursor as "a previous page of deliverys": the messages name the wrong
  thing (a webhook's id is not a run's).
- `checkpoint(threadId: ..., id: "")` answered the latest checkpoint, as for a
  null id: "" is no checkpoint id (BAD_USER_INPUT).
"""

from __future__ import annotations

import pytest

from tests.graphql.clients import codes, data, gql
from tests.graphql.conftest import Server

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


async def test_an_empty_graph_name_is_not_the_default_graph(server: Server) -> None:
    body = await gql(
        server.http, 'mutation { startRun(input: {message: "hi", graph: ""}) { id graph } }'
    )
    assert codes(body) == ["BAD_USER_INPUT"], body
    assert 'graph ""' in body["errors"][0]["message"], body
    count = await gql(server.http, "{ runs { totalCount } }")
    assert count["data"]["runs"]["totalCount"] == 0
    # Left out, the default graph runs.
    started = await gql(server.http, 'mutation { startRun(input: {message: "hi"}) { graph } }')
    assert data(started)["startRun"]["graph"] == "code_hero"


async def test_webhook_ids_and_cursors_are_named_as_such(server: Server) -> None:
    body = await gql(server.http, 'mutation { deleteWebhook(id: "nope") }')
    assert codes(body) == ["BAD_USER_INPUT"]
    message = body["errors"][0]["message"]
    assert "run id" not in message and "id must be a webhook id" in message, body
    body = await gql(server.http, '{ webhookDeliveries(webhookId: "nope") { edges { cursor } } }')
    assert codes(body) == ["BAD_USER_INPUT"]
    message = body["errors"][0]["message"]
    assert "run id" not in message and "webhookId must be a webhook id" in message, body
    body = await gql(server.http, '{ webhookDeliveries(runId: "nope") { edges { cursor } } }')
    assert "runId must be a run id" in body["errors"][0]["message"], body
    body = await gql(server.http, '{ webhookDeliveries(after: "x") { edges { cursor } } }')
    assert codes(body) == ["BAD_USER_INPUT"]
    message = body["errors"][0]["message"]
    assert "deliverys" not in message and "a previous page of deliveries" in message, body
    # Paged as every other listing: 1..the page limit (0 was an empty page; -1 no limit
    # on SQLite, a refused LIMIT on PostgreSQL).
    for first in (0, -1, 101):
        body = await gql(server.http, f"{{ webhookDeliveries(first: {first}) {{ totalCount }} }}")
        assert codes(body) == ["BAD_USER_INPUT"], (first, body)
        assert "first must be between 1 and" in body["errors"][0]["message"], body


async def test_an_empty_checkpoint_id_is_not_the_latest_checkpoint(server: Server) -> None:
    # `id` null means the latest checkpoint; "" is an id, and no valid one.
    started = await gql(
        server.http, 'mutation { startRun(input: {message: "hi", wait: true}) { threadId } }'
    )
    thread = data(started)["startRun"]["threadId"]
    latest = await gql(server.http, f'{{ checkpoint(threadId: "{thread}") {{ id }} }}')
    assert data(latest)["checkpoint"]["id"]
    body = await gql(server.http, f'{{ checkpoint(threadId: "{thread}", id: "") {{ id }} }}')
    assert codes(body) == ["BAD_USER_INPUT"], body
