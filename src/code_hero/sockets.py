"""The WebSocket protocols with shared `runEvents` streams (see code_hero.fanout).

Both handlers run a shareable operation as a gate first: Strawberry's own
path, so every check, error and message of a subscriber is what it was; the
gate's resolver only records the run to follow. Then the subscriber joins
the shared stream and sends each payload with its own id spliced in. Every
other operation takes Strawberry's path unchanged.

A malformed operation message never reaches Strawberry, whose handlers read its
fields unchecked (a `start` without a payload crashed the socket; a null query
was never answered): graphql-transport-ws closes the socket with 4400, as its
protocol and its reference server (graphql-ws's `validateMessage`) do; the
legacy protocol answers that operation an `error` and serves on, and a frame
that is no JSON object a `connection_error`. The subscription limit is refused
with BAD_USER_INPUT on both.

A socket authenticated by a JWT is closed when the token expires (the
authentication is made once, at `connection_init`): graphql-transport-ws
with 4403, as a refused `connection_init`; the legacy protocol with a
`connection_error` first, as its refusal (then 4403 too). The client reconnects with fresh
credentials, or is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from typing import Any, cast

from graphql import GraphQLError, GraphQLFormattedError
from starlette.websockets import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketDisconnected as SocketClosed
from strawberry.http.exceptions import (
    NonJsonMessageReceived,
    NonTextMessageReceived,
    WebSocketDisconnected,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
    _OperationStreamClosed,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    CompleteMessage,
    ConnectionInitMessage,
    SubscribeMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    CompleteMessage as LegacyComplete,
)
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ErrorMessage,
    OperationMessage,
    StartMessage,
)
from strawberry.types.execution import PreExecutionError

from code_hero.auth.tokens import TOKEN_EXPIRED
from code_hero.errors import BadInputError
from code_hero.fanout import Encoded, Fanout, Request, shareable
from code_hero.resolvers.context import Context
from code_hero.resolvers.sharing import MODE, Mode

__all__ = ["SharedLegacyWSHandler", "SharedTransportWSHandler"]


def _kind(value: object) -> str:
    """A JSON value's type, in JSON's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    return "an array" if isinstance(value, list) else "an object"


def _payload_fault(payload: object, *, extensions: bool) -> str | None:
    """What makes an operation's payload malformed, or None (graphql-ws's rules)."""
    if not isinstance(payload, dict):
        return f"the payload must be an object, not {_kind(payload)}"
    query = payload.get("query")
    if not isinstance(query, str):
        return f"payload.query must be a string, not {_kind(query)}"
    fields = ["variables", "extensions"] if extensions else ["variables"]
    for field in fields:
        if not isinstance(payload.get(field), dict | None):
            return f"payload.{field} must be an object or null, not {_kind(payload[field])}"
    name = payload.get("operationName")
    if not isinstance(name, str | None):
        return f"payload.operationName must be a string or null, not {_kind(name)}"
    return None


def _operation_fault(message: Mapping[str, object], *, extensions: bool) -> str | None:
    """What makes a `subscribe` or `start` message malformed, or None."""
    op_id = message.get("id")
    if not isinstance(op_id, str) or not op_id:
        return f"the id must be a non-empty string, not {_kind(op_id)}"
    return _payload_fault(message.get("payload"), extensions=extensions)


def _bad_input(message: str, **extensions: object) -> GraphQLFormattedError:
    """A GraphQL error the client caused, as it goes on the wire."""
    return GraphQLError(message, extensions={**extensions, "code": BadInputError.code}).formatted


def _limit_reached(limit: int) -> GraphQLFormattedError:
    return _bad_input(
        f"Subscription limit reached: at most {limit} operations at once on one socket; "
        "complete one, or open another socket",
        maxSubscriptions=limit,
    )


def _request(
    handler: Any, query: str, variables: dict[str, Any] | None, operation_name: str | None
) -> Request:
    return Request(
        handler.schema, query, variables, operation_name, handler.context, handler.view.encode_json
    )


def _text_sender(websocket: object) -> Callable[[str], Awaitable[None]]:
    """Send an encoded message on the operation's Starlette socket directly.

    The same frame as Strawberry's path (send_operation_message, send_message,
    send_json, encode_json, send_text): four coroutine layers fewer per
    subscriber and event, on the hottest path of a fan-out.
    """
    send_text = cast(WebSocket, cast(Any, websocket).ws).send_text

    async def send(text: str) -> None:
        try:
            await send_text(text)
        except (WebSocketDisconnect, SocketClosed) as exc:  # the socket is gone (or closed
            raise WebSocketDisconnected from exc  # by this side: a token's expiry)

    return send


def _close_at_expiry(
    context: Context, close: Callable[[], Awaitable[None]]
) -> asyncio.Task[None] | None:
    """A task that closes the socket when its caller's credentials expire; None when
    they do not (an API key, the open mode)."""
    identity = context.identity
    expires_at = identity.expires_at if identity is not None else None
    if expires_at is None:
        return None

    async def at_expiry() -> None:
        await asyncio.sleep(max(0.0, expires_at - time.time()))
        with contextlib.suppress(Exception):  # closed meanwhile: nothing to do
            await close()

    return asyncio.create_task(at_expiry())


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


class SharedTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """`graphql-transport-ws`, with shared `runEvents` streams."""

    _expiry: asyncio.Task[None] | None = None

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        """Strawberry's, taking a null payload as none: the protocol's reference server
        does (an object, null or missing), and its client sends the null a frontend's
        `connectionParams` returns. Strawberry closed such a socket with 4400. Once
        acknowledged, the socket is closed (4403) when its caller's token expires."""
        if message.get("payload", {}) is None:
            message = ConnectionInitMessage(type="connection_init")
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._expiry is None:
            self._expiry = _close_at_expiry(self.context, self._expired)

    async def _expired(self) -> None:
        # Its operations first: none may be sending as the socket closes under it.
        for op_id in list(self.operations):
            await self.cleanup_operation(op_id)
        await self.websocket.close(code=4403, reason=TOKEN_EXPIRED)

    async def shutdown(self) -> None:
        await _stop(self._expiry)
        await super().shutdown()

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        """Strawberry's, after the checks of the message and of the limit."""
        fault = _operation_fault(cast(Mapping[str, object], message), extensions=True)
        if fault is not None:  # 4400, the protocol's answer to a malformed message
            await self.handle_invalid_message(f"Invalid subscribe message: {fault}")
            return
        limit = self.max_subscriptions_per_connection
        if (
            limit is not None
            and self.connection_acknowledged  # else Strawberry closes with 4401
            and message["id"] not in self.operations  # else 4409
            and len(self.operations) >= limit
        ):
            await self.send_message(
                {"id": message["id"], "type": "error", "payload": [_limit_reached(limit)]}
            )
            return
        await super().handle_subscribe(message)

    async def handle_complete(self, message: CompleteMessage) -> None:
        """Strawberry's, for a string id; 4400 for any other (not a key of anything)."""
        if not isinstance(message["id"], str):
            await self.handle_invalid_message("Invalid complete message: the id must be a string")
            return
        await super().handle_complete(message)

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        """Strawberry's operation task, joining a shared stream after the gate."""
        if not shareable(operation.query, operation.operation_name):
            await super().run_operation(operation)
            return
        mode = Mode(gate=True, checks=cast(Any, self.view).fanout.checks)
        MODE.set(mode)  # this operation's task only
        try:
            result_source = await self.schema.stream(
                operation.query,
                variable_values=operation.variables,
                context_value=self.context,
                root_value=self.root_value,
                operation_name=operation.operation_name,
            )
            async with aclosing(result_source):
                await self._send_result_stream(operation, result_source)
            if mode.found is not None and not operation.completed:
                await self._send_shared(operation, mode)
            await operation.send_operation_message(
                CompleteMessage(id=operation.id, type="complete")
            )
        except _OperationStreamClosed:
            return
        except Exception as error:  # as Strawberry's own task does
            await self.handle_task_exception(error)
            try:
                await operation.send_operation_message({"id": operation.id, "type": "complete"})
            except Exception:  # the socket is gone: nothing to tell
                pass
            self.operations.pop(operation.id, None)
            raise

    async def _send_shared(self, operation: Operation[Context, None], mode: Mode) -> None:
        assert mode.found is not None
        fanout: Fanout = cast(Any, self.view).fanout
        request = _request(self, operation.query, operation.variables, operation.operation_name)
        head = '{"id":' + json.dumps(operation.id) + ',"type":"next","payload":'
        send = _text_sender(self.websocket)
        async for entry in fanout.follow(request, mode.found):
            if entry.errors is not None:
                await operation.send_operation_message(
                    {"id": operation.id, "type": "error", "payload": entry.errors}
                )
                return
            assert entry.payload is not None  # before any complete or error: sent as is
            await send(head + entry.payload + "}")


class SharedLegacyWSHandler(BaseGraphQLWSHandler[Context, None]):
    """The legacy `graphql-ws` protocol, with shared `runEvents` streams."""

    _expiry: asyncio.Task[None] | None = None

    async def handle_connection_init(self, message: Any) -> None:
        """Strawberry's; once acknowledged, the socket is closed when its caller's token
        expires, after a `connection_error` (as a refused `connection_init`)."""
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._expiry is None:
            self._expiry = _close_at_expiry(self.context, self._expired)

    async def _expired(self) -> None:
        error = {"message": TOKEN_EXPIRED, "code": "UNAUTHENTICATED"}
        await self.send_message(
            cast(OperationMessage, {"type": "connection_error", "payload": error})
        )
        await self.cleanup()  # its operations (each says `complete`), before the close
        await self.websocket.close(code=4403, reason=TOKEN_EXPIRED)

    async def handle(self) -> None:
        """Strawberry's loop, but a text frame that is no JSON object is answered a
        `connection_error` saying so, as subscriptions-transport-ws's server answers a
        frame it cannot parse, and the socket serves on. Strawberry's iteration skips
        text that is no JSON unanswered (the client waits for ever), and handed the
        handler JSON of another kind (`[1]`), which failed on it."""
        try:
            try:
                while True:  # a new iteration after each frame that is no JSON
                    try:
                        async for message in self.websocket.iter_json():
                            if isinstance(message, dict):
                                await self.handle_message(cast(OperationMessage, message))
                            else:
                                await self._not_an_object()
                        return
                    except NonJsonMessageReceived:
                        await self._not_an_object()
            except NonTextMessageReceived:
                await self.websocket.close(code=1002, reason="WebSocket message type must be text")
        except WebSocketDisconnected:
            pass
        finally:
            await _stop(self._expiry)
            if self.keep_alive_task:
                self.keep_alive_task.cancel()
                with contextlib.suppress(BaseException):
                    await self.keep_alive_task
            await self.cleanup()

    async def _not_an_object(self) -> None:
        await self.send_message(
            cast(
                OperationMessage,
                {
                    "type": "connection_error",
                    "payload": {"message": "a graphql-ws message is a JSON object"},
                },
            )
        )

    async def handle_message(self, message: OperationMessage) -> None:
        """Strawberry's, ignoring a message without a type and a stop of no string id
        (as it ignores a type it does not know) instead of failing on them."""
        fields = cast(Mapping[str, object], message)
        kind = fields.get("type")
        if not isinstance(kind, str) or (kind == "stop" and not isinstance(fields.get("id"), str)):
            return
        await super().handle_message(message)

    async def handle_start(self, message: StartMessage) -> None:
        """Strawberry's, after the checks of the message and of the limit: either
        refused answers this operation `error`, and the socket serves on."""
        if not self.connection_acknowledged:  # Strawberry closes with 4401
            await super().handle_start(message)
            return
        fields = cast(Mapping[str, object], message)
        fault = _operation_fault(fields, extensions=False)
        if fault is not None:
            op_id = fields.get("id")
            if isinstance(op_id, str):  # a start of a running id stops it first, as ever
                await self.cleanup_operation(op_id)
            await self._refuse(op_id, _bad_input(f"Invalid start message: {fault}"))
            return
        op_id = message["id"]
        limit = self.max_subscriptions_per_connection
        # A start of a running id replaces that operation: it frees its own place.
        if limit is not None and len(self.tasks) - (op_id in self.tasks) >= limit:
            await self.cleanup_operation(op_id)
            await self._refuse(op_id, _limit_reached(limit))
            return
        await super().handle_start(message)

    async def _refuse(self, op_id: object, error: GraphQLFormattedError) -> None:
        await self.send_message(
            cast(OperationMessage, {"type": "error", "id": op_id, "payload": error})
        )

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        """Strawberry's operation task, joining a shared stream after the gate."""
        if not shareable(query, operation_name):
            await super().handle_async_results(operation_id, query, operation_name, variables)
            return
        mode = Mode(gate=True, checks=cast(Any, self.view).fanout.checks)
        MODE.set(mode)  # this operation's task only
        try:
            result_source = await self.schema.subscribe(
                query=query,
                variable_values=variables,
                operation_name=operation_name,
                context_value=self.context,
                root_value=self.root_value,
            )
            self.subscriptions[operation_id] = result_source
            first = True
            async for result in result_source:
                if first and isinstance(result, PreExecutionError):
                    assert result.errors
                    await self.send_message(
                        ErrorMessage(
                            type="error", id=operation_id, payload=result.errors[0].formatted
                        )
                    )
                    return
                await self.send_data_message(result, operation_id)
                first = False
            if mode.found is not None:
                fanout: Fanout = cast(Any, self.view).fanout
                request = _request(self, query, variables, operation_name)
                head = '{"type":"data","id":' + json.dumps(operation_id) + ',"payload":'
                async for entry in fanout.follow(request, mode.found):
                    if entry.errors is not None:
                        await self.send_message(
                            ErrorMessage(type="error", id=operation_id, payload=entry.errors[0])
                        )
                        return
                    assert entry.payload is not None
                    message = Encoded("data", head + entry.payload + "}")
                    await self.send_message(cast(OperationMessage, message))
            await self.send_message(LegacyComplete(type="complete", id=operation_id))
        except asyncio.CancelledError:  # a stop: Strawberry answers it with complete
            await self.send_message(LegacyComplete(type="complete", id=operation_id))
            raise
        finally:
            self.subscriptions.pop(operation_id, None)
            self.tasks.pop(operation_id, None)
