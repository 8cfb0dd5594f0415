"""Tiny clients of the three subscription transports and of GraphQL over HTTP.

Each speaks the wire protocol as a real client does, over a real socket:
`graphql-transport-ws` and the legacy `graphql-ws` through the `websockets`
library, GraphQL over SSE and plain GraphQL through httpx.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

TIMEOUT = 15.0

__all__ = [
    "LegacyWS",
    "TransportWS",
    "codes",
    "data",
    "eventually",
    "gql",
    "sse",
    "until_finished",
]


async def gql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> dict[str, Any]:
    """POST one operation; the JSON body (status 200 asserted)."""
    response = await client.post("/graphql", json={"query": query, "variables": variables or {}})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def data(body: dict[str, Any]) -> dict[str, Any]:
    """The data of a response that must have no errors."""
    assert "errors" not in body, body["errors"]
    result: dict[str, Any] = body["data"]
    return result


def codes(body: dict[str, Any]) -> list[str]:
    """The extensions.code of each error."""
    return [e["extensions"]["code"] for e in body.get("errors", [])]


async def until_finished(
    client: httpx.AsyncClient, run_id: str, seconds: float = TIMEOUT
) -> dict[str, Any]:
    """Poll a run over HTTP until it has ended; the run's id, status and finishedAt."""
    query = "query($id: ID!) { run(id: $id) { id status error finishedAt } }"
    async with asyncio.timeout(seconds):
        while True:
            run: dict[str, Any] = data(await gql(client, query, {"id": run_id}))["run"]
            if run["status"] not in ("PENDING", "RUNNING"):
                return run
            await asyncio.sleep(0.02)


async def eventually(check: Callable[[], bool], seconds: float = TIMEOUT) -> None:
    """Wait until `check()` holds (for state a client cannot observe on the wire)."""
    async with asyncio.timeout(seconds):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


class _Socket:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def receive(self, seconds: float = TIMEOUT) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), seconds)
        message: dict[str, Any] = json.loads(raw)
        return message


class TransportWS(_Socket):
    """A `graphql-transport-ws` client."""

    protocol = "graphql-transport-ws"

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        init: bool = True,
        payload: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        origin: str | None = None,
    ) -> AsyncIterator[TransportWS]:
        """Open a socket (with upgrade headers), then `connection_init` with `payload`."""
        async with connect(
            url,
            subprotocols=[Subprotocol(cls.protocol)],
            additional_headers=headers,
            origin=origin,  # type: ignore[arg-type]  (websockets wants its Origin NewType)
        ) as ws:
            client = cls(ws)
            if init:
                await client.init(payload)
            yield client

    async def init(self, payload: dict[str, Any] | None = None) -> None:
        await self.send({"type": "connection_init", "payload": payload or {}})
        ack = await self.receive()
        assert ack["type"] == "connection_ack", ack

    async def subscribe(
        self, op_id: str, query: str, variables: dict[str, Any] | None = None
    ) -> None:
        await self.send(
            {
                "id": op_id,
                "type": "subscribe",
                "payload": {"query": query, "variables": variables or {}},
            }
        )

    async def complete(self, op_id: str) -> None:
        await self.send({"id": op_id, "type": "complete"})

    async def next_message(self, seconds: float = TIMEOUT) -> dict[str, Any]:
        """The next message, answering pings on the way."""
        while True:
            message = await self.receive(seconds)
            if message["type"] == "ping":
                await self.send({"type": "pong"})
                continue
            return message

    async def collect(
        self, op_id: str, *, limit: int | None = None, seconds: float = TIMEOUT
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """`next` payloads of one operation until it completes or errs (or `limit` arrive)."""
        payloads: list[dict[str, Any]] = []
        while limit is None or len(payloads) < limit:
            message = await self.next_message(seconds)
            if message.get("id") != op_id:
                continue
            if message["type"] == "next":
                payloads.append(message["payload"])
            else:
                return payloads, message
        return payloads, None


class LegacyWS(_Socket):
    """A client of the legacy `graphql-ws` protocol (subscriptions-transport-ws)."""

    protocol = "graphql-ws"

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        init: bool = True,
        payload: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[LegacyWS]:
        """Open a socket (with upgrade headers), then `connection_init` with `payload`."""
        async with connect(
            url, subprotocols=[Subprotocol(cls.protocol)], additional_headers=headers
        ) as ws:
            client = cls(ws)
            if init:
                await client.send({"type": "connection_init", "payload": payload or {}})
                ack = await client.receive()
                assert ack["type"] == "connection_ack", ack
            yield client

    async def start(self, op_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        await self.send(
            {
                "id": op_id,
                "type": "start",
                "payload": {"query": query, "variables": variables or {}},
            }
        )

    async def stop(self, op_id: str) -> None:
        await self.send({"id": op_id, "type": "stop"})

    async def collect(
        self, op_id: str, *, seconds: float = TIMEOUT
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """`data` payloads of one operation until `complete` or `error`."""
        payloads: list[dict[str, Any]] = []
        while True:
            message = await self.receive(seconds)
            if message["type"] == "ka" or message.get("id") != op_id:
                continue
            if message["type"] == "data":
                payloads.append(message["payload"])
            else:
                return payloads, message


async def sse(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None
) -> list[tuple[str, Any]]:
    """GraphQL over Server-Sent Events: (event, data) pairs until `complete`."""
    events: list[tuple[str, Any]] = []
    headers = {"accept": "text/event-stream"}
    body = {"query": query, "variables": variables or {}}
    async with client.stream("POST", "/graphql", json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.strip()
                continue
            event = fields.pop("event", None)  # a blank line ends an event
            payload = fields.pop("data", "")
            fields.clear()
            if event is None:  # a ": ping" comment
                continue
            events.append((event, json.loads(payload) if payload else None))
            if event == "complete":
                break
    return events
