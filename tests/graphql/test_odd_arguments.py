"""Arguments that are present but empty or of the wrong kind, named honestly.

- `startRun(input: {graph: ""})` ran the default graph, as if no graph were
  named; an empty name is no graph (NOT_FOUND, as any unknown name, or
  BAD_USER_INPUT), never a silent default.
- A malformed webhook id was refused as "id must be a run id", and a malformed
  delivery cursor as "a previous page of deliverys": the messages name the wrong
  thing (a webhook's id is not a run's).
"""

from __future__ import annotations

import pytest

from tests.graphql.clients import codes, gql
from tests.graphql.conftest import Server

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


async def test_an_empty_graph_name_is_not_the_default_graph(server: Server) -> None:
    body = await gql(
        server.http, 'mutation { startRun(input: {message: "hi", graph: ""}) { id graph } }'
    )
    assert codes(body) in (["NOT_FOUND"], ["BAD_USER_INPUT"]), body
    count = await gql(server.http, "{ runs { totalCount } }")
    assert count["data"]["runs"]["totalCount"] == 0


async def test_webhook_ids_and_cursors_are_named_as_such(server: Server) -> None:
    body = await gql(server.http, 'mutation { deleteWebhook(id: "nope") }')
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "run id" not in body["errors"][0]["message"], body
    body = await gql(server.http, '{ webhookDeliveries(webhookId: "nope") { edges { cursor } } }')
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "run id" not in body["errors"][0]["message"], body
    body = await gql(server.http, '{ webhookDeliveries(after: "x") { edges { cursor } } }')
    assert codes(body) == ["BAD_USER_INPUT"]
    assert "deliverys" not in body["errors"][0]["message"], body
