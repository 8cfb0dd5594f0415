"""Schema extensions of every operation: fresh loaders, error codes, operation counts."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from graphql import ASTValidationRule, DocumentNode, GraphQLError
from strawberry.extensions import SchemaExtension

from code_hero.limits import MAX_CACHED_TEXT
from code_hero.resolvers.context import Context
from code_hero.schema.errors import client_error, error_code

__all__ = [
    "Degraded",
    "Document",
    "Documents",
    "ErrorCodes",
    "OperationContext",
    "OperationCounter",
]


class OperationContext(SchemaExtension):
    """Give each operation its own copy of the context, with fresh DataLoaders.

    `get_context` runs once per WebSocket connection; the loaders must not
    outlive one operation.
    """

    def on_operation(self) -> Iterator[None]:
        ctx = self.execution_context.context
        if isinstance(ctx, Context):
            self.execution_context.context = ctx.for_operation()
        yield


def _errors(result: Any) -> list[GraphQLError]:
    return list(getattr(result, "errors", None) or [])


def _map(result: Any, suggestions: bool) -> None:
    if _errors(result):
        result.errors = [client_error(x, suggestions=suggestions) for x in result.errors]


class ErrorCodes(SchemaExtension):
    """Put `extensions.code` on every error and mask internal ones (see schema.errors).

    Without `suggestions`, "Did you mean ...?" hints are cut from the messages.
    """

    def __init__(self, *, suggestions: bool = True) -> None:
        self._streamed = False
        self.suggestions = suggestions

    def on_operation(self) -> Iterator[None]:
        self._streamed = False
        yield
        if not self._streamed:  # streamed results were mapped one by one
            _map(self.execution_context.result, self.suggestions)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        self._streamed = True
        _map(result, self.suggestions)
        yield


class OperationCounter(SchemaExtension):
    """Report each operation's type and outcome ("ok" or the first error's code)."""

    def __init__(self) -> None:
        self._status: str | None = None

    def on_operation(self) -> Iterator[None]:
        self._status = None
        try:
            yield
        finally:
            ctx = self.execution_context.context
            if isinstance(ctx, Context) and ctx.observe_operation is not None:
                if self._status is None:
                    errors = _errors(self.execution_context.result)
                    self._status = error_code(errors[0]) if errors else "ok"
                ctx.observe_operation(self._operation_type(), self._status)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        errors = _errors(result)
        if errors and self._status in (None, "ok"):
            self._status = error_code(errors[0])
        elif self._status is None:
            self._status = "ok"
        yield

    def _operation_type(self) -> str:
        try:
            return str(self.execution_context.operation_type.value)
        except Exception:  # no document: it did not parse
            return "unknown"


@dataclass
class Document:
    """A text that parsed: its AST (shared: graphql-core never mutates one) and
    whether this schema found it valid."""

    ast: DocumentNode
    valid: bool = False


class Documents(SchemaExtension):
    """Parse each document text once, and validate it once it has been found valid.

    Clients send the same few documents again and again: parsing was a fifth of
    a thread-list request's time, validation (with the depth, alias and token
    rules) a seventh of a history page's (py-spy, bench/peer.py and
    bench/gateway.py). The limits are fixed per schema, so a text that parsed
    (with the fixed token limit) parses the same way again, and a text valid
    once stays valid. Texts that parsed are kept, in a bounded LRU keyed by
    the exact text and shared by the schema's requests; one found invalid is
    validated, and refused, each time, and one that fails to parse is parsed,
    and fails, each time, inside Strawberry's own error handling.
    (Strawberry's ParserCache raises parse errors from inside an extension
    hook, where they lose their error code; its ValidationCache keys on rule
    classes.)

    The limits come with the extension: `max_tokens` for parsing (0: none) and
    the extra validation `rules`, set where Strawberry parses and validates.
    (Strawberry's MaxTokensLimiter and AddValidationRules would do the same as
    two more extensions, whose hooks cost every request its share.)
    """

    def __init__(
        self,
        cache: OrderedDict[str, Document],
        maxsize: int = 512,
        *,
        rules: Sequence[type[ASTValidationRule]] = (),
        max_tokens: int = 0,
    ) -> None:
        super().__init__()
        self.cache = cache
        self.maxsize = maxsize
        self.rules = tuple(rules)
        self.max_tokens = max_tokens
        self.document: Document | None = None

    def on_parse(self) -> Iterator[None]:
        ctx = self.execution_context
        if self.max_tokens:
            ctx.parse_options["max_tokens"] = self.max_tokens
        key = ctx.query
        if key is None or ctx.graphql_document is not None:
            yield
            return
        self.document = self.cache.get(key)
        if self.document is not None:
            self.cache.move_to_end(key)
            ctx.graphql_document = self.document.ast  # Strawberry skips parsing a set document
            yield
            return
        yield
        if ctx.graphql_document is not None and len(key) <= MAX_CACHED_TEXT:
            self.document = self.cache[key] = Document(ctx.graphql_document)
            if len(self.cache) > self.maxsize:
                self.cache.popitem(last=False)

    def on_validate(self) -> Iterator[None]:
        ctx = self.execution_context
        if self.rules:
            ctx.validation_rules = (*ctx.validation_rules, *self.rules)
        document = self.document
        if document is None or document.ast is not ctx.graphql_document:
            yield  # not a cached text
            return
        if document.valid:
            ctx.pre_execution_errors = []  # Strawberry skips validating then
            yield
            return
        yield
        if ctx.pre_execution_errors == []:
            document.valid = True


class Degraded(SchemaExtension):
    """Mark every response made during a database outage: `extensions.degraded: true`.

    Listings then hold only what the fallback has (threads and runs born during
    the outage), so a client can tell a short page from a complete one.
    """

    def get_results(self) -> dict[str, Any]:
        ctx = self.execution_context.context
        if not isinstance(ctx, Context):
            return {}
        router = ctx.gateway.manager.router
        if router.serving:
            return {}
        since = router.degraded_since
        return {"degraded": True, "degradedSince": since.isoformat() if since else None}
