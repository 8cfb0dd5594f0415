"""The schema, built for a set of limits."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import strawberry
from graphql import ASTValidationRule, GraphQLError, GraphQLObjectType
from graphql.validation.rules import overlapping_fields_can_be_merged
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    QueryDepthLimiter,
    SchemaExtension,
)
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext
from strawberry.types.graphql import OperationType

from code_hero.limits import Limits
from code_hero.persistence.backgroundlog import BackgroundLog
from code_hero.schema.arguments import install_argument_resolvers
from code_hero.schema.checkpoints import Checkpoint
from code_hero.schema.errors import INTERNAL, error_code, raw_cause, root_cause
from code_hero.schema.events import EVENT_TYPES
from code_hero.schema.execution import LeafExecutor, install_leaf_fields, plain_leaf
from code_hero.schema.extensions import Documents, OperationHooks
from code_hero.schema.roots import Mutation, Query, Subscription
from code_hero.schema.runner import HookRunner
from code_hero.schema.scalars import SCALARS

__all__ = ["GatewaySchema", "build_schema"]

# graphql-core's check that fields of one name can be merged (OverlappingFieldsCanBeMerged)
# compares them pairwise, and every pair of fragments spread together through the
# fragments they spread: its work grows with the square of what a document repeats. Within
# the token limit, 600 copies of one field held the event loop 1.2 s, 400 fragments spread
# side by side 2 s, ten chains of forty fragments 5 s, before the rule's own budget
# (500,000 units) ended them. At this budget each ends within about 0.4 s, answered
# QUERY_TOO_COMPLEX (schema.errors); the dashboard's and the README's documents spend at
# most 9 units, and sixty fragments of one type, each of five fields all the others
# select too, about 30,000.
MERGE_BUDGET = 50_000

log = logging.getLogger("code_hero.graphql")


# Kinds of request errors whose WARNINGs are counted (`GatewaySchema._told`), at most:
# the database's own texts differ (relations, blocks), and the map must stay bounded.
_KINDS_REMEMBERED = 64
# What the database's first line numbers within one relation (a block, a TOAST value, a
# chunk, a page, an offset): one damaged table read at many blocks is one kind.
_NUMBERED = re.compile(r"\b(block|value|number|page|offset|item)\s+\d+")


class _Execution(ExecutionContext):
    """Strawberry's execution context, its operation's type and name found once per
    document: Strawberry's properties look the operation up among the document's
    definitions (and make the type's enum from its text) at every read, five a request
    (Strawberry's checks, the cost's, the count's): 1 % of a thread-list page's CPU."""

    _found: tuple[object, OperationType] | None = None  # (the document, its type)
    _named: tuple[object, str | None] | None = None  # (the document, the name)

    @property
    def operation_type(self) -> OperationType:
        found, document = self._found, self.graphql_document
        if found is not None and found[0] is document:
            return found[1]
        kind = super().operation_type  # RuntimeError without a document or an operation
        self._found = (document, kind)
        return kind

    @property
    def operation_name(self) -> str | None:
        named, document = self._named, self.graphql_document
        if named is not None and named[0] is document:
            return named[1]
        name = super().operation_name
        self._named = (document, name)
        return name


class GatewaySchema(strawberry.Schema):
    """Strawberry's schema, logging internal errors (with traceback) and only those, and
    running its extension's hooks through `HookRunner` (see schema.runner)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A lock held for a minute, a statement_timeout that a slow disk runs out: every
        # request meeting it fails alike. One WARNING a minute per kind (what the client
        # is told: busy, cancelled, damaged) says so, counting the others, logged at
        # DEBUG; not one per request.
        self._told: dict[str, BackgroundLog] = {}

    def _create_execution_context(
        self,
        query: str | None,
        allowed_operation_types: Iterable[OperationType],
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionContext:
        return _Execution(
            query=query,
            schema=self,
            allowed_operations=allowed_operation_types,
            context=context_value,
            root_value=root_value,
            variables=variable_values,
            provided_operation_name=operation_name,
            operation_extensions=operation_extensions,
        )

    def create_extensions_runner(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> SchemaExtensionsRunner:
        return HookRunner(execution_context=execution_context, extensions=extensions)

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        for error in errors:
            if error_code(error) == INTERNAL:
                cause = root_cause(error) or error
                log.error(
                    "internal error at %s: %s",
                    ".".join(str(p) for p in error.path or ()) or "(request)",
                    error.message,
                    exc_info=(type(cause), cause, cause.__traceback__),
                )
            elif root_cause(error) is not raw_cause(error):
                # A lost race for a database lock, a damaged file: the client is told
                # in our words; the log keeps the database's own account (which
                # transactions, which locks, which error), one line, no traceback.
                # Keyed by the database's own first line too: a second damaged
                # relation, or another kind of clash, is news of its own.
                own = _NUMBERED.sub(r"\1 N", str(raw_cause(error)).partition("\n")[0])
                kind = f"{root_cause(error)}\0{own}"
                told = self._told.pop(kind, None)
                if told is None:
                    told = BackgroundLog(log, lambda _exc: logging.WARNING)
                self._told[kind] = told  # the newest last
                if len(self._told) > _KINDS_REMEMBERED:
                    del self._told[next(iter(self._told))]
                told.failed(error, "request error: %s", error.message)
            else:
                log.debug("request error: %s", error.message)


def build_schema(limits: Limits | None = None) -> strawberry.Schema:
    """The gateway's schema with these limits; a limit of 0 turns that check off."""
    limits = limits or Limits()
    # Process-wide, read by the rule as each validation starts: see MERGE_BUDGET.
    overlapping_fields_can_be_merged.MAX_COMPLEXITY_BUDGET = MERGE_BUDGET
    # The validation rules are made once: the limiters would make their rule classes
    # anew for every request, validated or not; Documents applies them (and the token
    # limit) where it parses and validates.
    rules: list[type[ASTValidationRule]] = []
    if not limits.introspection:
        rules += DisableIntrospection().validation_rules
    if limits.max_depth > 0:
        rules += QueryDepthLimiter(max_depth=limits.max_depth).validation_rules
    if limits.max_aliases > 0:
        rules += MaxAliasesLimiter(max_alias_count=limits.max_aliases).validation_rules
    # Clients repeat their documents: each text is parsed once, and validated until valid.
    documents = Documents(rules=rules, max_tokens=max(limits.max_tokens, 0))
    suggestions = limits.field_suggestions
    # Priced on every operation (extensions.cost, the read rate limit); 0: no maximum.
    max_cost = limits.max_cost

    def hooks() -> OperationHooks:
        return OperationHooks(documents, suggestions=suggestions, max_cost=max_cost)

    schema = GatewaySchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=EVENT_TYPES,
        extensions=[hooks],
        execution_context_class=LeafExecutor,
        config=StrawberryConfig(
            scalar_map=SCALARS, disable_field_suggestions=not limits.field_suggestions
        ),
    )
    _resolve_plainly(schema)
    install_leaf_fields(schema)
    # After the leaves: a plain method is read directly instead (see schema.execution).
    install_argument_resolvers(schema)
    return schema


def _checkpoint_values(source: Checkpoint, info: Any, keys: list[str] | None = None) -> Any:
    return source.values(keys)


def _all_values(source: Checkpoint) -> Any:
    return source.values(None)


def _resolve_plainly(schema: strawberry.Schema) -> None:
    """Hand graphql-core a plain resolver for `Checkpoint.values(keys:)`, resolved once per
    checkpoint of a page.

    Strawberry wraps every field that has arguments in a resolver that converts
    them, builds an Info and chains field extensions on each call: a tenth of a
    history page's execution (py-spy, bench/gateway.py). This field has no
    extension, needs no Info, and its one argument (a list of strings) arrives
    from graphql-core as it is meant to be used, so the wrapper does nothing
    for it but cost time.
    """
    checkpoint = schema._schema.type_map["Checkpoint"]
    assert isinstance(checkpoint, GraphQLObjectType)
    values = checkpoint.fields["values"]
    values.resolve = _checkpoint_values
    # Without `keys`, LeafExecutor completes it directly (see schema.execution).
    values.resolve = plain_leaf(values, _all_values) or values.resolve
