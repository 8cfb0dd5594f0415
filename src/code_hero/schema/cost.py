"""What a document may cost, priced before it runs, as GitHub's and Shopify's APIs do.

The cost of an operation is the most objects its answer can hold, every page
full:

- a field whose value is an object (or a list of objects) costs 1 for each
  object; a scalar or enum costs nothing, except `Thread.values`, which loads
  a checkpoint (1), a connection's `totalCount`, one count query (1), and
  `Checkpoint.updatedBy`, which may read the parent checkpoint (1);
  `Checkpoint.changes` reads the parent and compares it: 1 more than its
  one counted object (a page's parents are read at most once, so this is an
  upper bound);
- a field with a `first` argument is paged: a list it returns (`events`)
  holds `first` items; a connection it returns (`threads`, `runs`,
  `checkpoints`) holds `first` edges, so its `edges` list does; `first` is the
  literal, the variable's value or default, else the field's default (20 or
  100, from the schema); nested pages multiply;
- `webhooks` counts 100 items (a user's most); other lists (`backends`,
  `pendingWrites`, `graphs`) count one item, except those whose length has a
  known bound (`LIST_SIZES`): a run's `steps`, a stats `series` (up to 1,000
  buckets) and `byStatus` (every status);
  `Thread.interrupts` (a small list) counts one item plus its state read (1);
- the root field of a subscription (`runEvents`, `threadEvents`, `runStream`)
  counts as a page of 100 events; `runStream` also starts a run, which counts
  against the mutation limit in the gateway as `startRun` does;
- introspection (`__schema`, `__type`) costs 1 and `__typename` nothing;
- inline fragments and fragment spreads are priced where they are spread,
  each condition as if it applied (an upper bound); `@skip`/`@include` are
  ignored (an upper bound too).

The schema's extension (schema.extensions) prices each operation before it
runs and reports `extensions.cost`; `admit` refuses one with QUERY_TOO_COMPLEX
above the maximum and spends the cost of a read from the caller's rate limit.
A cost depends on the document, the operation and the variables `first` takes,
nothing else: `Prices` keeps a cached document's costs by those.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    get_nullable_type,
    is_composite_type,
    value_from_ast_untyped,
)
from graphql.utilities import get_operation_ast
from strawberry.types import ExecutionContext
from strawberry.types.graphql import OperationType as Kind

from code_hero.errors import CodeHeroError, QueryTooComplexError
from code_hero.persistence.records import RunStatus
from code_hero.persistence.stats import MAX_BUCKETS
from code_hero.resolvers.context import Context
from code_hero.resolvers.sharing import producing
from code_hero.schema.variables import check_input_size

__all__ = ["LIST_SIZES", "SUBSCRIPTION_PAGE", "Prices", "admit", "operation_cost", "page_variables"]

PAGE_ARGUMENT = "first"
SUBSCRIPTION_PAGE = 100  # a subscription is priced like one page of its events
INTROSPECTION = frozenset({"__schema", "__type"})
# Scalars that cost a load of their own.
SCALAR_COSTS: Mapping[tuple[str, str], int] = {
    ("Thread", "values"): 1,
    ("ThreadConnection", "totalCount"): 1,
    ("RunConnection", "totalCount"): 1,
    ("CheckpointConnection", "totalCount"): 1,
    ("Checkpoint", "updatedBy"): 1,
    ("WebhookDeliveryConnection", "totalCount"): 1,
}
# Object fields that read more than their objects: `changes` reads the parent checkpoint.
OBJECT_LOADS: Mapping[tuple[str, str], int] = {("Checkpoint", "changes"): 1}

# Lists that cost a load of their own, once per parent object, beside their items.
LIST_LOADS: Mapping[tuple[str, str], int] = {
    ("Thread", "interrupts"): 1,
}
# Lists without `first` whose length is known or bounded: priced at that length.
LIST_SIZES: Mapping[tuple[str, str], int] = {
    ("Query", "webhooks"): 100,  # code_hero.webhook_access.MAX_WEBHOOKS_PER_USER
    ("RunStats", "series"): MAX_BUCKETS,
    ("RunStats", "byStatus"): len(RunStatus),
    ("StatsBucket", "byStatus"): len(RunStatus),
    # A run's node executions: about one per superstep, and at most 100 supersteps by
    # default (CODE_HERO_MAX_RECURSION_LIMIT); parallel branches make it an estimate.
    ("Run", "steps"): 100,
}

_Fields = GraphQLObjectType | GraphQLInterfaceType


class _Pricer:
    """One walk over one operation; `variables` as the client sent them."""

    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
        defaults: Mapping[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.defaults = defaults

    def selections(
        self,
        selection_set: SelectionSetNode,
        parent: Any,
        times: int,
        page: int | None,
        spread: frozenset[str] = frozenset(),
    ) -> int:
        """The cost of a selection set resolved `times` times; `page` sizes its lists."""
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent, times, page)
            elif isinstance(selection, InlineFragmentNode):
                inner = self._type(selection.type_condition, parent)
                total += self.selections(selection.selection_set, inner, times, page, spread)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in spread:  # validation reports both
                    continue
                inner = self._type(fragment.type_condition, parent)
                total += self.selections(
                    fragment.selection_set, inner, times, page, spread | {name}
                )
        return total

    def field(self, node: FieldNode, parent: Any, times: int, page: int | None) -> int:
        name = node.name.value
        if name in INTROSPECTION:
            return times
        if not isinstance(parent, _Fields) or name not in parent.fields:
            return 0  # __typename, or a field validation refuses
        definition = parent.fields[name]
        paged = PAGE_ARGUMENT in definition.args
        size = self.page_size(node, definition.args[PAGE_ARGUMENT]) if paged else None
        is_list = isinstance(get_nullable_type(definition.type), GraphQLList)
        loads = times * LIST_LOADS.get((parent.name, name), 0)
        if is_list:
            listed = size if size is not None else LIST_SIZES.get((parent.name, name), page)
            times *= 1 if listed is None else listed
        named = get_named_type(definition.type)
        key = (parent.name, name)
        weight = (
            1 + OBJECT_LOADS.get(key, 0) if is_composite_type(named) else SCALAR_COSTS.get(key, 0)
        )
        if node.selection_set is None:
            return loads + times * weight
        # A paged field that is not a list is a connection: its `edges` hold the page.
        inner_page = None if is_list else size
        inner = self.selections(node.selection_set, named, times, inner_page)
        return loads + times * weight + inner

    def page_size(self, node: FieldNode, argument: Any) -> int:
        """`first` as the client gave it, else the schema's default for it."""
        default = argument.default_value if isinstance(argument.default_value, int) else 1
        value: Any = None
        for given in node.arguments or ():
            if given.name.value != PAGE_ARGUMENT:
                continue
            if isinstance(given.value, VariableNode):
                var = given.value.name.value
                value = self.variables[var] if var in self.variables else self.defaults.get(var)
            elif isinstance(given.value, IntValueNode):
                value = int(given.value.value)
        size = _whole(value)
        if size is None:
            return default  # null, absent or not a number (execution refuses the latter)
        return max(0, size)

    def _type(self, condition: Any, parent: Any) -> Any:
        if condition is None:
            return parent
        return self.schema.get_type(condition.name.value)


def operation_cost(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None = None,
    variables: Mapping[str, Any] | None = None,
) -> int:
    """The cost of the document's operation (see the module docstring); 0 when there is none."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return 0
    root = _root(schema, operation)
    if root is None:
        return 0
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    defaults = {
        d.variable.name.value: value_from_ast_untyped(d.default_value)
        for d in operation.variable_definitions or ()
        if d.default_value is not None
    }
    pricer = _Pricer(schema, fragments, variables or {}, defaults)
    times = SUBSCRIPTION_PAGE if operation.operation is OperationType.SUBSCRIPTION else 1
    return pricer.selections(operation.selection_set, root, times, None)


def page_variables(document: DocumentNode) -> tuple[str, ...]:
    """The variables given to a `first` argument anywhere in the document."""
    names: dict[str, None] = {}
    todo = [d.selection_set for d in document.definitions if hasattr(d, "selection_set")]
    while todo:
        for selection in todo.pop().selections:
            for given in getattr(selection, "arguments", None) or ():
                if given.name.value == PAGE_ARGUMENT and isinstance(given.value, VariableNode):
                    names[given.value.name.value] = None
            inner = getattr(selection, "selection_set", None)
            if inner is not None:
                todo.append(inner)
    return tuple(names)


# Costs kept per document (operation names times distinct page sizes); past it,
# priced each time.
MAX_PRICES = 64
_ABSENT = "absent"  # a page variable the request does not give (its default applies)


class Prices:
    """One document's costs by operation name and the page variables' values.

    Clients send the same few documents, mostly with the same page sizes: pricing
    walked the whole document on every request (140,000 instructions, 2.6 % of a
    thread-list page's; callgrind). A
    value that is not an integer (null, a string, a boolean) prices as the field's
    default page, so all such values share one entry; an absent variable has one
    of its own (the variable's default applies).
    """

    def __init__(self, schema: GraphQLSchema, document: DocumentNode) -> None:
        self.schema = schema
        self.document = document
        self.variables = page_variables(document)
        self.costs: dict[Hashable, int] = {}

    def cost(self, operation_name: str | None, variables: Mapping[str, Any] | None) -> int:
        """`operation_cost` of this document, priced once per distinct key."""
        given = variables or {}
        if operation_name is not None and not isinstance(operation_name, str):
            return operation_cost(self.schema, self.document, operation_name, given)
        key = (operation_name, *(_page_value(given, name) for name in self.variables))
        cost = self.costs.get(key)
        if cost is None:
            cost = operation_cost(self.schema, self.document, operation_name, given)
            if len(self.costs) < MAX_PRICES:
                self.costs[key] = cost
        return cost


def _page_value(variables: Mapping[str, Any], name: str) -> Hashable:
    """What `_Pricer.page_size` makes of the variable: an integer, the default, absent."""
    if name not in variables:
        return _ABSENT
    return _whole(variables[name])


def _whole(value: Any) -> int | None:
    """A page size as execution reads it: an integer, or a float with no fraction
    (graphql-core's Int takes 100.0 as 100); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _root(schema: GraphQLSchema, operation: OperationDefinitionNode) -> GraphQLObjectType | None:
    if operation.operation is OperationType.QUERY:
        return schema.query_type
    if operation.operation is OperationType.MUTATION:
        return schema.mutation_type
    return schema.subscription_type


def admit(ctx: ExecutionContext, cost: int, max_cost: int) -> None:
    """Refuse the operation about to run if it costs more than `max_cost` (0: no
    maximum), else spend its cost.

    First, variables holding more values than any input takes are refused (see
    schema.variables), before graphql-core and Strawberry convert them one by one.
    Reads (queries and subscriptions) spend it from the caller's read rate limit;
    mutations count against the mutation limit where they run. A refused query
    or mutation gets its one error as `ctx.result`, so Strawberry skips executing
    it; a refused subscription raises, and Strawberry answers it as the stream's
    one result.
    """
    try:
        ast = ctx.graphql_document
        if ast is not None:
            check_input_size(ctx.schema._schema, ast, ctx.operation_name, ctx.variables)
        if max_cost and cost > max_cost:
            raise QueryTooComplexError(cost, max_cost)
        context = ctx.context
        kind = ctx.operation_type
        # A shared stream's producer is paid for by each subscriber's gate.
        if isinstance(context, Context) and kind is not Kind.MUTATION and not producing():
            context.gateway.spend_reads(context.caller, cost)
    except CodeHeroError as exc:
        if ctx.operation_type is Kind.SUBSCRIPTION:
            raise
        refused = GraphQLError(str(exc), original_error=exc)
        ctx.result = ExecutionResult(data=None, errors=[refused])  # skips execution
