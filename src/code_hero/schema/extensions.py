"""The schema's one extension: everything the gateway does around each operation."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from graphql import (
    ASTValidationRule,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from strawberry.extensions import SchemaExtension
from strawberry.types import ExecutionContext
from strawberry.types.graphql import OperationType

from code_hero.limits import MAX_CACHED_TEXT
from code_hero.resolvers.context import Context
from code_hero.schema.cost import Prices, admit, operation_cost
from code_hero.schema.errors import client_error, error_code

__all__ = [
    "MAX_SPREAD_DEPTH",
    "MIN_EXPANDED_FIELDS",
    "SUBSCRIPTION_STARTED",
    "Document",
    "Documents",
    "OperationHooks",
    "expanded_fields",
    "unnamed",
]

# The key, in an SSE request's ASGI state, of the event set once its operation executes
# as a subscription (app's `_StoppableStream`: only a subscription is cut at a stop).
SUBSCRIPTION_STARTED = "code_hero.subscription_started"


class OperationHooks(SchemaExtension):
    """Around each operation: its own context, its document (parsed and validated once),
    its price, error codes, its count, and the degraded mark.

    One extension rather than one per concern: Strawberry makes each extension,
    and wraps each of its hooks, anew for every request, which for six of them
    was a seventh of a thread-list page's time (py-spy, bench/peer.py).

    - Context: each operation gets its own copy, with fresh DataLoaders
      (`get_context` runs once per WebSocket connection; the loaders must not
      outlive one operation).
    - Documents: see `Documents`.
    - Cost: priced before it runs (see schema.cost), reported as
      `extensions.cost`; `max_cost` 0: no maximum.
    - Error codes: `extensions.code` on every error, internal ones masked (see
      schema.errors); without `suggestions`, "Did you mean ...?" hints are cut.
    - Count: the operation's type and outcome ("ok" or the first error's code)
      go to the context's `observe_operation`.
    - Degraded: every response made during a database outage says
      `extensions.degraded: true`, so a client can tell a short page (only what
      the fallback has) from a complete one.
    """

    def __init__(self, documents: Documents, *, suggestions: bool = True, max_cost: int = 0):
        super().__init__()
        self.documents = documents
        self.suggestions = suggestions
        self.max_cost = max_cost
        self.document: Document | None = None
        self.cost: int | None = None
        self._streamed = False
        self._status: str | None = None

    def on_operation(self) -> Iterator[None]:
        ctx = self.execution_context
        if isinstance(ctx.context, Context):
            ctx.context = ctx.context.for_operation()
        self._streamed = False
        self._status = None
        try:
            yield
            if not self._streamed:  # streamed results were mapped one by one
                _map(ctx.result, self.suggestions)
        finally:
            self._count()

    def on_parse(self) -> Iterator[None]:
        self.document = yield from self.documents.parse(self.execution_context)

    def on_validate(self) -> Iterator[None]:
        yield from self.documents.validate(self.execution_context, self.document)

    def on_execute(self) -> Iterator[None]:
        ctx = self.execution_context
        self.cost = None
        if ctx.graphql_document is not None:
            self.cost = self.documents.price(ctx, self.document)
            admit(ctx, self.cost, self.max_cost)
            if ctx.operation_type is OperationType.SUBSCRIPTION:
                _subscription_started(ctx.context)
        yield

    def on_stream_result(self, result: Any) -> Iterator[None]:
        errors = _errors(result)  # counted as they came, then mapped
        if errors and self._status in (None, "ok"):
            self._status = error_code(errors[0])
        elif self._status is None:
            self._status = "ok"
        self._streamed = True
        _map(result, self.suggestions)
        yield

    def get_results(self) -> dict[str, Any]:
        results = _degraded(self.execution_context.context)
        if self.cost is not None:
            results["cost"] = self.cost
        return results

    def _count(self) -> None:
        ctx = self.execution_context.context
        if isinstance(ctx, Context) and ctx.observe_operation is not None:
            if self._status is None:
                errors = _errors(self.execution_context.result)
                self._status = error_code(errors[0]) if errors else "ok"
            ctx.observe_operation(self._operation_type(), self._status)

    def _operation_type(self) -> str:
        try:
            return str(self.execution_context.operation_type.value)
        except Exception:  # no document: it did not parse
            return "unknown"


def _subscription_started(context: Any) -> None:
    """Set the event an SSE stream put in its request's state (`SUBSCRIPTION_STARTED`)."""
    scope = getattr(getattr(context, "request", None), "scope", None)
    if isinstance(scope, dict) and (state := scope.get("state")) is not None:
        started = state.get(SUBSCRIPTION_STARTED)
        if started is not None:
            started.set()


def _errors(result: Any) -> list[GraphQLError]:
    return list(getattr(result, "errors", None) or [])


def _map(result: Any, suggestions: bool) -> None:
    if _errors(result):
        result.errors = [client_error(x, suggestions=suggestions) for x in result.errors]


def _degraded(ctx: Any) -> dict[str, Any]:
    if not isinstance(ctx, Context):
        return {}
    router = ctx.gateway.manager.router
    if router.serving:
        return {}
    since = router.degraded_since
    return {"degraded": True, "degradedSince": since.isoformat() if since else None}


_UNKNOWN = object()  # Strawberry's private attribute not there


# The fields a document may hold once its fragments are spread: at least this many, and
# twice the token limit (a document's own fields need two tokens each, `a` and `}` or
# the next name), so a document the token limit lets through is never refused here.
MIN_EXPANDED_FIELDS = 10_000
# How deep fragments may be spread inside one another (a real client's: a few).
MAX_SPREAD_DEPTH = 100


def expanded_fields(document: DocumentNode, limit: int) -> int:
    """How many fields the document's operations select once every fragment spread is
    replaced by its fragment, counted up to `limit + 1` (then it stops).

    Linear in the document's size: each fragment is counted once and its count reused
    wherever it is spread. Forty fragments each spreading the one before twice are 2 KB
    of text and 2^40 fields: the depth limiter (Strawberry's QueryDepthLimiter walks
    every spread again) and the pricer (schema.cost) would each walk them all, holding
    the event loop for minutes. A fragment spread inside itself counts nothing here;
    validation refuses the cycle. Fragments spread inside one another more than
    `MAX_SPREAD_DEPTH` deep count as past the limit: graphql-core's validation
    recurses through such a chain and overflows Python's stack (an INTERNAL error).
    """
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    counted: dict[str, int] = {}
    open_: list[str] = []  # the fragments being counted, outermost first

    def count(selections: SelectionSetNode | None) -> int:
        total = 0
        for node in selections.selections if selections is not None else ():
            if isinstance(node, FieldNode):
                total += 1 + count(node.selection_set)
            elif isinstance(node, InlineFragmentNode):
                total += count(node.selection_set)
            elif isinstance(node, FragmentSpreadNode):
                total += spread(node.name.value)
            if total > limit:
                return limit + 1
        return total

    def spread(name: str) -> int:
        if name not in counted:
            fragment = fragments.get(name)
            if fragment is None or name in open_:  # unknown, or a cycle: validation's
                return 0
            if len(open_) >= MAX_SPREAD_DEPTH:
                return limit + 1
            open_.append(name)
            counted[name] = count(fragment.selection_set)
            open_.pop()
        return counted[name]

    total = 0
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            total = min(total + count(definition.selection_set), limit + 1)
    return total


def unnamed(ctx: ExecutionContext) -> GraphQLError | None:
    """The request error for a document of several operations that names none to run.

    The GraphQL spec (GetOperation) makes that an error; Strawberry instead runs the
    first one (its `ExecutionContext.operation_name` falls back to the first
    operation's name, which it then hands to graphql-core), so `mutation Drop {...}
    query Look {...}` sent without a name ran the mutation. Checked before
    validation, so nothing of the document runs. The name as the request gave it is
    only kept privately by Strawberry (`_provided_operation_name`); the tests of
    tests/graphql/test_operation_name.py fail if that changes.
    """
    ast = ctx.graphql_document
    # Not there (a Strawberry that renamed it): as the name, whatever Strawberry says it
    # is; a failure on every request would be worse than the check lost.
    provided = getattr(ctx, "_provided_operation_name", _UNKNOWN)
    if provided is _UNKNOWN:
        provided = ctx.operation_name
    if ast is None or provided is not None:
        return None
    definitions = ast.definitions
    if len(definitions) < 2:  # nearly every request: one operation, nothing else
        return None
    operations = [d for d in definitions if isinstance(d, OperationDefinitionNode)]
    if len(operations) < 2:
        return None
    names = [d.name.value if d.name else "(anonymous)" for d in operations]
    if len(set(names)) < len(names):
        # Two share a name (or none has one): validation says so, the spec's words
        # ("There can be only one operation named 'A'."); nothing runs either way.
        return None
    return GraphQLError(
        f"the document holds {len(names)} operations ({', '.join(names)}) and no operation"
        " name: name the one to run with operationName"
    )


@dataclass
class Document:
    """A text that parsed: its AST (shared: graphql-core never mutates one),
    whether this schema found it valid, and its costs."""

    ast: DocumentNode
    valid: bool = False
    prices: Prices | None = None  # made at its first execution


class Documents:
    """Parse each document text once, validate it once it has been found valid, and
    price it once per operation and page size (see schema.cost's `Prices`).

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

    The limits come with the cache: `max_tokens` for parsing (0: none) and the
    extra validation `rules`, set where Strawberry parses and validates.
    (Strawberry's MaxTokensLimiter and AddValidationRules would do the same as
    two more extensions, whose hooks cost every request its share.) One per
    schema; `parse` and `validate` run inside the hooks of the same names.
    """

    def __init__(
        self,
        maxsize: int = 512,
        *,
        rules: Sequence[type[ASTValidationRule]] = (),
        max_tokens: int = 0,
    ) -> None:
        self.cache: OrderedDict[str, Document] = OrderedDict()
        self.maxsize = maxsize
        self.rules = tuple(rules)
        self.max_tokens = max_tokens
        self.max_expanded = max(MIN_EXPANDED_FIELDS, 2 * max_tokens)

    def parse(self, ctx: ExecutionContext) -> Generator[None, None, Document | None]:
        """Around Strawberry's parsing: the document of this text, if it is kept."""
        if self.max_tokens:
            ctx.parse_options["max_tokens"] = self.max_tokens
        key = ctx.query
        if key is None or ctx.graphql_document is not None:
            yield
            return None
        document = self.cache.get(key)
        if document is not None:
            self.cache.move_to_end(key)
            ctx.graphql_document = document.ast  # Strawberry skips parsing a set document
            yield
            return document
        yield
        if ctx.graphql_document is None or len(key) > MAX_CACHED_TEXT:
            return None
        document = self.cache[key] = Document(ctx.graphql_document)
        if len(self.cache) > self.maxsize:
            self.cache.popitem(last=False)
        return document

    def validate(self, ctx: ExecutionContext, document: Document | None) -> Iterator[None]:
        """Around Strawberry's validation of `document` (what `parse` gave); a document of
        several operations without `operationName` is refused here (see `unnamed`)."""
        refused = unnamed(ctx)
        if refused is not None:
            ctx.pre_execution_errors = [refused]  # Strawberry then neither validates nor runs
            yield
            return
        if self.rules:
            ctx.validation_rules = (*ctx.validation_rules, *self.rules)
        cached = document if document is not None and document.ast is ctx.graphql_document else None
        if cached is not None and cached.valid:
            ctx.pre_execution_errors = []  # Strawberry skips validating then
            yield
            return
        if self._refused_expanded(ctx):  # Strawberry then neither validates nor runs
            yield
            return
        yield
        if cached is not None and ctx.pre_execution_errors == []:
            cached.valid = True

    def _refused_expanded(self, ctx: ExecutionContext) -> bool:
        """Refuse (before any validation rule walks it) a document whose fragments
        spread to more than `max_expanded` fields: see `expanded_fields`."""
        ast = ctx.graphql_document
        try:
            if ast is None or expanded_fields(ast, self.max_expanded) <= self.max_expanded:
                return False
        except RecursionError:  # selections nested past Python's stack: not a real query
            pass
        ctx.pre_execution_errors = [
            GraphQLError(
                f"the document selects more than {self.max_expanded} fields once its "
                f"fragments are spread, or spreads fragments more than {MAX_SPREAD_DEPTH} "
                "deep: spread each fragment fewer times",
                extensions={"code": "QUERY_TOO_COMPLEX"},
            )
        ]
        return True

    def price(self, ctx: ExecutionContext, document: Document | None) -> int:
        """The cost of the operation about to run; `document` is what `parse` gave."""
        schema = ctx.schema._schema
        ast = ctx.graphql_document
        assert ast is not None
        if document is None or document.ast is not ast:  # not a cached text
            return operation_cost(schema, ast, ctx.operation_name, ctx.variables)
        if document.prices is None:
            document.prices = Prices(schema, ast)
        return document.prices.cost(ctx.operation_name, ctx.variables)
