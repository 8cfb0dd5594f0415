"""The ASGI application: Starlette routes around the Strawberry schema, and the lifespan.

    /graphql   POST, GET; WebSocket (graphql-transport-ws, graphql-ws); SSE;
               GraphiQL for a browser when settings.graphiql
    /healthz   200 with the health JSON while checkpoints are stored, else 503
    /metrics   Prometheus text: the gateway's metrics and GraphQL operation counts
    /ui        the dashboard, a client of /graphql (unless settings.ui is off)
    /vendor    GraphiQL's and the dashboard's third-party files (see code_hero.ui)

The lifespan owns the `Gateway` unless the caller passes one in (then the
caller enters and leaves it). Every limit comes from `settings.limits`.

Authentication happens here, at the edge, and nowhere else: an HTTP request
to /graphql without valid `Authorization: Bearer` credentials is answered
401 with a GraphQL error (UNAUTHENTICATED) before Strawberry sees it; a
WebSocket authenticates with the header on the upgrade or `authorization` in
its `connection_init` payload and is closed with 4403 otherwise, before any
operation runs. The resulting `Caller` goes into the context, and every
resolver hands it to the gateway, which enforces what it may see and do.
/healthz and /metrics need no credentials (see the README's Security); /healthz
shows each backend's last error as a category, never the driver's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException, StarletteRequestAdapter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLRequestData
from strawberry.http.types import QueryParams
from strawberry.schema import BaseSchema
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions import (
    GRAPHQL_SSE_PROTOCOL,
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
)
from strawberry.subscriptions.protocols.graphql_ws.types import ConnectionInitMessage
from strawberry.types import ExecutionResult, SubscriptionExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UNSET, UnsetType

from code_hero.auth import ANONYMOUS, Authenticator, Caller
from code_hero.errors import UnauthenticatedError
from code_hero.fanout import Encoded, Fanout
from code_hero.gateway import Gateway
from code_hero.persistence.jsonable import to_jsonable
from code_hero.persistence.jsontext import loads
from code_hero.resolvers.context import Context, OperationObserver
from code_hero.runs.waits import Waits
from code_hero.schema import build_schema
from code_hero.schema.extensions import SUBSCRIPTION_STARTED
from code_hero.settings import AppSettings, Limits
from code_hero.sockets import SharedLegacyWSHandler, SharedTransportWSHandler
from code_hero.ui import offline_graphiql_html, ui_routes, vendor_routes

if TYPE_CHECKING:
    from code_hero.exposition import Exposition

__all__ = ["create_app"]

log = logging.getLogger(__name__)

STORING = frozenset({"healthy", "degraded"})
JSON = "application/json"  # the Content-Type read without parsing (see parse_http_body)
UNSUPPORTED_MEDIA_TYPE = "Unsupported content type: send the request as application/json"
BATCHES = "Batches are not supported: send one operation per request, a JSON object"
ACK: UnsetType = UNSET  # connection_ack without a payload


class _Runtime:
    """The gateway while the app runs (set by the lifespan)."""

    gateway: Gateway | None = None

    def require(self) -> Gateway:
        if self.gateway is None:
            raise RuntimeError("the app is not running: its lifespan has not started")
        return self.gateway


class RequestAdapter(StarletteRequestAdapter):
    """Strawberry's Starlette request, its Content-Type's media type in lower case.

    Type and subtype are case-insensitive (RFC 9110, 8.3.1), but Strawberry looks for
    the substring `application/json` and our fast path for the exact header: a client
    sending `Application/JSON` got 400 "Unsupported content type". Parameters (a
    boundary may be case-sensitive) are left as they are.
    """

    @property
    def content_type(self) -> str | None:
        value = super().content_type
        if value is None or value == JSON:
            return value
        media, sep, parameters = value.partition(";")
        return media.lower() + sep + parameters


class _JSONArray(json.JSONDecodeError):
    """A JSON array where an object belongs: a batch, when it is a POST's body."""


class LegacyWSHandler(SharedLegacyWSHandler):
    """The legacy `graphql-ws` protocol, closing an unauthenticated socket with 4403.

    Strawberry closes a rejected legacy socket with 1011; the same rule as
    `graphql-transport-ws` (4403) is clearer to clients. Authentication itself
    is the view's `on_ws_connect`, which the parent calls again (a no-op then).
    """

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        if payload is None or isinstance(payload, dict):
            self.context.connection_params = payload
            try:
                await self.view.on_ws_connect(self.context)
            except ConnectionRejectionError as exc:
                await self.send_message({"type": "connection_error", "payload": exc.payload})
                await self.websocket.close(code=4403, reason="Forbidden")
                return
        await super().handle_connection_init(message)


# What a subscription sent as a plain HTTP request is told (HTTP 400).
SUBSCRIPTION_TRANSPORTS = (
    "subscriptions need a streaming transport: a WebSocket (graphql-transport-ws or "
    "graphql-ws) or Server-Sent Events (an HTTP request with Accept: text/event-stream)"
)


class _Answered(Exception):  # not an error: a plain result carried past `run`
    """A plain result of `GraphQLView.execute_operation`, for `GraphQLView.__call__`."""

    def __init__(self, result: ExecutionResult, sub_response: Response) -> None:
        super().__init__()
        self.result = result
        self.sub_response = sub_response


class GraphQLView(GraphQL[Context, None]):
    """Strawberry's ASGI view with our context and authentication."""

    graphql_ws_handler_class = LegacyWSHandler
    graphql_transport_ws_handler_class = SharedTransportWSHandler
    request_adapter_class = RequestAdapter

    def __init__(
        self,
        schema: BaseSchema,
        runtime: _Runtime,
        limits: Limits,
        observe: OperationObserver,
        authenticator: Authenticator | None = None,
        fanout: Fanout | None = None,
        **options: Any,
    ) -> None:
        super().__init__(schema, **options)
        self.runtime = runtime
        self.limits = limits
        self.observe = observe
        self.authenticator = authenticator or Authenticator()
        self.fanout = fanout or Fanout()  # shared runEvents streams of this app's sockets
        # What an Accept header may ask to stream by (SSE): Strawberry makes these anew at
        # each request's look-up; `accepts` reads only the header.
        self.header_transports = tuple(self._stream_transport_map.values())
        # Set when the server begins to stop (serve's SIGTERM): every SSE stream ends
        # (and the lifespan answers every startRun(wait) begun here, `waits`).
        self.stopping = asyncio.Event()
        self.waits = Waits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        if self.authenticator.enabled and not self._is_ide_page(request):
            try:
                caller = await self.authenticator.caller(request.headers.get("authorization"))
            except UnauthenticatedError as exc:
                response = _error_response(
                    401, str(exc), exc.code, **{"www-authenticate": 'Bearer realm="code-hero"'}
                )
                await response(scope, receive, send)
                return
            request.state.caller = caller
        plain = None
        try:
            response = await self.run(request)
        except _Answered as answered:
            # Made outside this block: an error of it is not raised "during" this one.
            plain = (answered.result, answered.sub_response)
        except HTTPException as exc:  # a body that is not a GraphQL request: JSON all the same
            response = _error_response(exc.status_code, exc.reason, "BAD_USER_INPUT")
        if plain is not None:
            response = await self._respond(request, *plain)
        await response(scope, receive, send)

    async def execute_operation(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Response,
    ) -> ExecutionResult | list[ExecutionResult] | SubscriptionExecutionResult:
        """Strawberry's; a plain result (nearly every request's) goes straight to `__call__`.

        Strawberry's `run` first asks whether the result is a `SubscriptionExecutionResult`,
        a runtime-checkable Protocol: `isinstance` then looks each of its methods up with
        `inspect.getattr_static`, 17 us a request (4 % of a `{ __typename }`'s app CPU).
        A plain `ExecutionResult` is none of the kinds `run` streams, so `__call__` makes
        the response `run` would make for it (`_respond`).
        """
        result = await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )
        if type(result) is ExecutionResult:
            raise _Answered(result, sub_response)
        return result

    async def _respond(
        self, request: Request, result: ExecutionResult, sub_response: Response
    ) -> Response:
        """What Strawberry's `run` answers for a plain (not streamed, not batched) result."""
        response_data = await self.process_result(request=request, result=result)
        if result.errors:
            self._handle_errors(result.errors, response_data)
        return self.create_response(response_data=response_data, sub_response=sub_response)

    async def create_streaming_response(
        self,
        request: Request | WebSocket,
        stream: Callable[[], AsyncIterator[str]],
        sub_response: Response,
        headers: Mapping[str, str],
    ) -> Response:
        """An SSE stream that ends once the server begins to stop, or its caller's token
        expires (see `_StoppableStream`)."""
        caller = getattr(request.state, "caller", None)
        return _StoppableStream(
            stream(),
            self.stopping,
            expires_at=caller.expires_at if caller is not None else None,
            status_code=sub_response.status_code or 200,
            headers={**sub_response.headers, **headers},
        )

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """Strawberry's, with subscriptions refused: they reach here only over plain
        HTTP, which cannot stream them (SSE and WebSockets go elsewhere)."""
        method = request_adapter.method
        allowed = OperationType.from_http(method) - {OperationType.SUBSCRIPTION}
        if not self.allow_queries_via_get and method == "GET":
            allowed -= {OperationType.QUERY}
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as exc:
            raise HTTPException(400, exc.as_http_error_reason()) from exc
        except InvalidOperationTypeError as exc:
            if exc.operation_type is OperationType.SUBSCRIPTION:
                raise HTTPException(400, SUBSCRIPTION_TRANSPORTS) from exc
            raise HTTPException(400, exc.as_http_error_reason(method)) from exc
        except MissingQueryError as exc:
            raise HTTPException(400, "No GraphQL query found in the request") from exc

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        """Strawberry's, without its parse of a `Content-Type: application/json` header.

        Strawberry parses the header with the `email` package's MIME parser on every
        request (32,000 instructions, 0.6 % of a thread-list page's; callgrind); the
        header clients send is exactly `application/json`, which needs no parsing. Anything else
        (other headers, GET, a body whose fields are not a query's) goes through
        Strawberry's own parse and its errors; Starlette keeps the body read here.
        The Accept header is matched against `header_transports`, made once (Strawberry
        makes its transports anew for each look-up: 3 % of a `{ __typename }`'s app time).
        Batching is not served: a body that is a JSON array is told so (400 BATCHES).
        """
        try:
            return await self._parse_http_body(request)
        except HTTPException as exc:  # not "Unable to parse": the body is JSON
            if request.method == "POST" and isinstance(exc.__cause__, _JSONArray):
                raise HTTPException(400, BATCHES) from exc
            if exc.status_code == 400 and exc.reason == "Unsupported content type":
                # A body of a media type no GraphQL-over-HTTP server reads: HTTP's 415.
                raise HTTPException(415, UNSUPPORTED_MEDIA_TYPE) from exc
            raise

    async def _parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        if request.method == "POST" and request.content_type == JSON:
            body = self.parse_json(await request.get_body())  # a JSON object, else 400
            query, variables = body.get("query"), body.get("variables")
            extensions = body.get("extensions")
            if (
                isinstance(query, str | None)
                and isinstance(variables, dict | None)
                and isinstance(extensions, dict | None)
            ):
                accept = request.headers.get("accept", "")
                transport = next((t for t in self.header_transports if t.accepts(accept)), None)
                return GraphQLRequestData(
                    query=query,
                    variables=variables,
                    operation_name=body.get("operationName"),
                    extensions=extensions,
                    protocol=transport.protocol if transport else "http",
                )
        return await super().parse_http_body(request)

    def encode_json(self, data: object) -> str:
        """Every response and socket message, with orjson (a tenth of json.dumps' time);
        a message encoded already (a shared stream's) is sent as it is.

        Text, not bytes: Strawberry sends bytes over a WebSocket as binary frames,
        which graphql-ws clients do not read. What orjson refuses (an integer past
        64 bits, a key that is not a string) goes through json.dumps as before.
        """
        if isinstance(data, Encoded):
            return data.text
        try:
            return orjson.dumps(data).decode()
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            return json.dumps(data, separators=(",", ":"))

    def decode_json(self, data: str | bytes) -> object:
        """A body, a socket message or a GET parameter: a JSON object, else malformed.

        Anything else (a list, a number, JSON nested past the recursion limit)
        is answered as unparsable (HTTP 400, WebSocket 4400), never a crash.

        Read by `jsontext.loads`: as json.loads reads it, with orjson wherever the
        two agree (an eighth of json.loads' time on a request body).
        """
        try:
            value = loads(data)
        except RecursionError:
            raise json.JSONDecodeError("nested too deeply", "", 0) from None
        except UnicodeDecodeError:
            raise json.JSONDecodeError("not UTF-8", "", 0) from None
        if isinstance(value, list):
            raise _JSONArray("a JSON array, not an object", "", 0)
        if not isinstance(value, dict):
            raise json.JSONDecodeError("not a JSON object", "", 0)
        return value

    def parse_query_params(self, params: QueryParams) -> dict[str, Any]:
        """A GET's parameters: `variables` and `extensions`, when given, are JSON objects;
        one that is not is named in the 400 (Strawberry's says the request body)."""
        parsed: dict[str, Any] = dict(params)
        for name in ("variables", "extensions"):
            if parsed.get(name):
                try:
                    parsed[name] = self.decode_json(parsed[name])
                except json.JSONDecodeError as exc:
                    raise HTTPException(400, f"the {name} parameter must be a JSON object") from exc
        return parsed

    async def render_graphql_ide(self, request: Request) -> Response:
        """GraphiQL with its assets served from the package: it works offline."""
        return HTMLResponse(offline_graphiql_html())

    def _is_ide_page(self, request: Request) -> bool:
        """GraphiQL's page itself (static HTML) needs no credentials; its queries do."""
        return (
            self.graphql_ide is not None
            and request.method == "GET"
            and "query" not in request.query_params
            and "text/html" in request.headers.get("accept", "")
        )

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        identity: Caller | None = ANONYMOUS
        if self.authenticator.enabled:
            identity = getattr(request.state, "caller", None)  # None: a socket not yet verified
        return Context(
            gateway=self.runtime.require(),
            limits=self.limits,
            request=request,
            response=response,
            observe_operation=self.observe,
            identity=identity,
            waits=self.waits,
        )

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Authenticate a socket at `connection_init`: the upgrade's header, else the payload."""
        if not self.authenticator.enabled or context.identity is not None:
            return ACK
        header = context.request.headers.get("authorization")
        params = context.connection_params or {}
        given = header if header is not None else params.get("authorization")
        if given is None:
            given = params.get("Authorization")
        try:
            context.identity = await self.authenticator.caller(given, bare=header is None)
        except UnauthenticatedError as exc:
            raise ConnectionRejectionError({"message": str(exc), "code": exc.code}) from None
        return ACK


# ---------------------------------------------------------------- body size


class _StoppableStream(StreamingResponse):
    """A streamed response (SSE) whose subscription ends once `stopping` is set.

    uvicorn stops by waiting for every open connection to finish its response, and only
    then runs the lifespan's shutdown (the runs' drain, an outage's copy-back). An SSE
    subscription that never ends by itself (`threadEvents`; `runEvents` of a long run)
    held that wait until the orchestrator's SIGKILL. Once the server begins to stop,
    a subscription's stream is ended as a client's disconnect would end it (Starlette
    cancels the body, which closes the subscription), then the body is finished: the
    client reads a stream that stops with no `complete`, a cut it resumes elsewhere
    (`afterSeq`), as a WebSocket closed with 1012 is. A query or a mutation sent over
    SSE runs inside the stream too (Strawberry's `schema.stream`): it is left to finish
    and answer, or a `startRun` would be cut with its run started and its id untold.
    The operation's type is known once it executes (`OperationHooks` sets the event this
    puts in the request's state, `SUBSCRIPTION_STARTED`); a stream still parsing at the
    stop is ended if it turns out to be a subscription. Starlette listens for the
    disconnect on ASGI 2.3 (what uvicorn's HTTP protocols speak); on 2.4 it would not,
    and the stream would not end.
    """

    def __init__(
        self,
        content: AsyncIterator[str],
        stopping: asyncio.Event,
        *,
        expires_at: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(content, **options)
        self.stopping = stopping
        # A subscription authenticated by a JWT ends the same way when the token expires
        # (checked once, as the request came): the client's next request gets the 401.
        self.expires_at = expires_at

    async def _stopping_or_expired(self) -> None:
        if self.expires_at is None:
            await self.stopping.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, self.expires_at - time.time())):
                await self.stopping.wait()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stopped = started = ended = False
        subscription = asyncio.Event()
        scope.setdefault("state", {})[SUBSCRIPTION_STARTED] = subscription

        async def subscription_stopped() -> None:
            await self._stopping_or_expired()
            await subscription.wait()

        async def receive_or_stop() -> Message:
            nonlocal stopped
            received = asyncio.ensure_future(receive())
            stop = asyncio.ensure_future(subscription_stopped())
            try:
                await asyncio.wait((received, stop), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not received.done():
                    received.cancel()
            if received.done() and not received.cancelled():
                return received.result()
            stopped = True
            return {"type": "http.disconnect"}

        async def tracking_send(message: Message) -> None:
            nonlocal started, ended
            await send(message)
            started = True
            ended = message["type"] == "http.response.body" and not message.get("more_body")

        await super().__call__(scope, receive_or_stop, tracking_send)
        if stopped and started and not ended:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _error_response(status: int, message: str, code: str, **headers: str) -> Response:
    """A GraphQL-shaped error body with an HTTP status (requests that never execute)."""
    body = {"errors": [{"message": message, "extensions": {"code": code}}]}
    return JSONResponse(body, status_code=status, headers=headers or None)


class _BodyTooLarge(Exception):
    pass


def _framing(scope: Scope) -> tuple[bytes | None, bool]:
    """The request's Content-Length (None: not given) and whether it is chunked."""
    length, chunked = None, False
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            length = bytes(value)
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked


class BodySizeLimit:
    """Answer 413 to an HTTP request whose body exceeds `max_bytes`.

    Checks Content-Length up front, and counts the bytes of a body without one
    (chunked) as they arrive, so it is cut off too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        declared, chunked = _framing(scope)
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            if not chunked:
                # The server reads exactly the declared length (HTTP/1.1 framing; uvicorn's
                # parsers stop there): nothing to count, no wrappers around every message.
                await self.app(scope, receive, send)
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if started:  # too late for a status: drop the connection
                raise
            await self._too_large()(scope, receive, send)

    def _too_large(self) -> Response:
        return _error_response(
            413, f"Request body exceeds {self.max_bytes} bytes", "BAD_USER_INPUT"
        )


# ---------------------------------------------------------------- the app


def _middleware(settings: AppSettings) -> list[Middleware]:
    """Body size limit; CORS for the allowed origins (none: browsers block cross-origin)."""
    middleware = [Middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)]
    if settings.cors_origins:
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type", "accept"],
                max_age=600,
            ),
        )
    return middleware


def create_app(settings: AppSettings | None = None, *, gateway: Gateway | None = None) -> Starlette:
    """The ASGI app; its lifespan enters a Gateway of `settings.gateway` unless one is given."""
    settings = settings or AppSettings()
    limits = settings.limits
    runtime = _Runtime()
    fanout = Fanout()
    # GraphQL operations by (type, outcome), and when each pair was first seen.
    operations: Counter[tuple[str, str]] = Counter()
    first_seen: dict[tuple[str, str], float] = {}

    def observe(operation_type: str, status: str) -> None:
        key = (operation_type, status)
        if key not in first_seen:
            first_seen[key] = time.time()
        operations[key] += 1

    view = GraphQLView(
        build_schema(limits),
        runtime,
        limits,
        observe,
        Authenticator(settings.auth),
        fanout,
        graphql_ide="graphiql" if settings.graphiql else None,
        subscription_protocols=(
            GRAPHQL_TRANSPORT_WS_PROTOCOL,
            GRAPHQL_WS_PROTOCOL,
            GRAPHQL_SSE_PROTOCOL,
        ),
        connection_init_wait_timeout=timedelta(seconds=limits.ws_init_timeout),
        max_subscriptions_per_connection=limits.max_subscriptions or None,
        allowed_origins=settings.cors_origins,
    )

    async def healthz(request: Request) -> Response:
        try:
            report = await runtime.require().health_for(None)  # no caller: categories
        except Exception:
            log.exception("health check failed")
            return JSONResponse({"overall_status": "unhealthy"}, status_code=503)
        code = 200 if report.get("overall_status") in STORING else 503
        return JSONResponse(to_jsonable(report), status_code=code)

    exposition: Exposition | None = None

    async def metrics(request: Request) -> Response:
        nonlocal exposition
        if exposition is None:
            # prometheus-client (about 1 MiB resident) loads at the first scrape.
            from code_hero.exposition import Exposition

            exposition = Exposition(lambda: runtime.gateway, fanout, operations, first_seen)
        body, media_type = exposition.render()
        return Response(body, media_type=media_type)

    @asynccontextmanager
    async def stopping_answers_waits(gw: Gateway) -> AsyncIterator[None]:
        """Once the server begins to stop (`stopping`), the waiting starts begun through
        this app are answered (another app's on the same gateway are not): else uvicorn
        would wait for their runs' ends before the lifespan's shutdown."""

        async def answer_when_stopping() -> None:
            await view.stopping.wait()
            gw.stop_waiting(view.waits)

        watch = asyncio.create_task(answer_when_stopping())
        try:
            yield
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if gateway is not None:
            runtime.gateway = app.state.gateway = gateway
            async with stopping_answers_waits(gateway):
                yield
            return
        # The page limit is the configured one on every layer (resolvers, gateway).
        own = replace(settings.gateway, max_page=limits.max_page)
        async with Gateway(own) as owned, stopping_answers_waits(owned):
            runtime.gateway = app.state.gateway = owned
            try:
                yield
            finally:
                runtime.gateway = None

    graphql = Route("/graphql", view, methods=["GET", "POST"])
    # Starlette adds HEAD to a route that takes GET, and so listed it in the Allow of
    # every 405 here, while Strawberry refuses HEAD (405): GraphQL over HTTP is GET and
    # POST only, so HEAD is refused by Starlette too, with an Allow that leaves it out.
    assert graphql.methods is not None
    graphql.methods.discard("HEAD")
    routes: list[BaseRoute] = [
        graphql,
        WebSocketRoute("/graphql", view),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if settings.ui:
        routes += ui_routes(graphiql=settings.graphiql)
    if settings.ui or settings.graphiql:
        routes += vendor_routes()
    app = Starlette(routes=routes, middleware=_middleware(settings), lifespan=lifespan)
    app.state.fanout = fanout
    # serve sets it when uvicorn begins to stop: SSE streams end, waiting starts answer
    app.state.stopping = view.stopping
    # serve awaits `answered` before uvicorn closes the sockets (their starts' answers)
    app.state.waits = view.waits
    return app
