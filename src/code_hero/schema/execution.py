"""The executor of every operation: graphql-core's, with plain leaf fields read directly.

Most fields of a page are plain: an attribute of the object (Strawberry's
default resolver, no arguments, no extension, no permission class), or a
method that takes only `self`, whose type is a scalar or an enum, or a list of
them. graphql-core still gives each one
the whole field machinery: a resolve info, the resolver call through
Strawberry's wrapper, an awaitable check, and completion through the
non-null, list and leaf branches; for a page of 20 checkpoints that is some
170 fields and most of what execution costs beyond the database
(py-spy, bench/gateway.py).

`install_leaf_fields` marks those fields once, when the schema is built, by
giving each a `LeafField` resolver (which, called the usual way, reads the
attribute as Strawberry's did). `LeafExecutor` then completes a marked field
by reading the attribute and serializing it with the type's own
`coerce_output_value`, and nothing else. Whenever that is not the plain case
(a null for a non-null type, a value that is awaitable or an exception, a
list that is not a list, a coercion that fails or gives null, a `@stream`ed
list) or the operation has resolver middleware (an extension with a
`resolve` hook), the field goes through graphql-core's `execute_field` from
the start, so its value and errors (message, path, locations, null bubbling)
are graphql-core's own. (A method is then called again: plain methods must be
pure, as the edges' `cursor`s are.)

A plain field whose type is an object, or a list of objects (an edge's
`node`, a connection's `edges` and `pageInfo`), is marked an `ObjectField`:
`LeafExecutor` reads it directly too and goes straight to executing the
object's sub-fields, with graphql-core's own error handling at the field
(and, in a list, at each item). Unlike a leaf's, that work cannot be undone,
so the value is checked whole first: a null for a non-null type, a value
that is awaitable or an exception, a list that is not a list or holds any
such item, an object type with an `is_type_of` check, an argument or a
directive, resolver middleware: graphql-core's path, from the start.

`LeafExecutor.execute_fields` decides that once per selection and operation
(its plan), not once per field of every object of a page: the plain fields of
an object are completed in the loop over its selection, with no
`execute_field` call and, for a leaf, no `Path` (8 % of the instructions of
executing a page of 10 threads; callgrind). An object completed directly
finds its selection and that plan once per operation too (`_subselection`),
not through graphql-core's per-object look-ups, wherever graphql-core would
execute its fields with no delivery group (no @defer).

Clients send the same few documents again and again, each parsed once (schema.extensions'
`Documents`: the same AST every time). Where an operation's document has no directive at
all (no @skip, @include, @defer or @stream, nothing that makes collecting its fields
depend on the variables or deliver them in parts), the fields collected under each
object and their plans are the same at every execution: `collect_subfields` and the
plans are kept with the operation (`_Shared`, held as long as its AST is) and shared by
its executions, not made anew for each (a page of 10 threads collects four selections
and plans five: 3 % of the server's CPU for the page; py-spy, bench/peer.py's list row).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any, Final

import strawberry
from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfoHelpers,
    GraphQLScalarType,
    Undefined,
    is_object_type,
)
from graphql.execution.collect_fields import CollectedFields, FieldDetailsList, GroupedFieldSet
from graphql.language import (
    FieldNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.pyutils import Path, gather_with_cancel
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types.field import StrawberryField

__all__ = ["LeafExecutor", "LeafField", "ObjectField", "install_leaf_fields", "plain_leaf"]

# A value the fast path does not complete: graphql-core's path does, from the start.
_SLOW: Final = object()
# Types whose values are never awaitable nor exceptions (exact types: not subclasses).
_INERT: Final = frozenset({str, int, float, bool, dict, list, datetime})
# The name Strawberry gives the resolver of a basic field: no resolver of its own,
# no field extension (permission classes are one), no exception handler.
_BASIC_RESOLVER = "_get_basic_result"
# ...and of a field with a synchronous resolver of its own.
_METHOD_RESOLVER = "_resolver"


class LeafField:
    """The resolver of a plain leaf field, and how to complete its value directly.

    `read` gives the field's value of a source: its attribute, or its method
    called with the source alone. A `bare` field is completed directly only where
    the document gives it no argument and no directive (a list's @stream).
    """

    __slots__ = (
        "_is_default",
        "bare",
        "coerce",
        "in_list",
        "items_non_null",
        "non_null",
        "original",
        "read",
    )

    def __init__(
        self,
        original: Callable[..., Any],
        read: Callable[[Any], Any],
        coerce: Callable[[Any], Any],
        *,
        non_null: bool,
        in_list: bool,
        items_non_null: bool,
        attribute: bool,
        bare: bool = False,
    ) -> None:
        self.original = original
        self.read = read
        self.coerce = coerce
        self.non_null = non_null
        self.in_list = in_list
        self.items_non_null = items_non_null
        self.bare = in_list or bare
        self._is_default = attribute  # Strawberry's tracing skips default resolvers

    def __call__(self, source: Any, info: Any, **kwargs: Any) -> Any:
        return self.original(source, info, **kwargs)

    def complete(self, source: Any, is_awaitable: Callable[[Any], bool]) -> Any:
        """The completed value of this field of `source`, or _SLOW when it is not plain."""
        try:
            value = self.read(source)
            if value is None:
                return _SLOW if self.non_null else None
            if not self.in_list:
                return self._leaf(value, is_awaitable)
            if type(value) is not list and type(value) is not tuple:
                return _SLOW
            completed: list[Any] = []
            for item in value:
                if item is None:
                    if self.items_non_null:
                        return _SLOW
                    completed.append(None)
                    continue
                leaf = self._leaf(item, is_awaitable)
                if leaf is _SLOW:
                    return _SLOW
                completed.append(leaf)
            return completed
        except Exception:  # the slow path raises it again, located
            return _SLOW

    def _leaf(self, value: Any, is_awaitable: Callable[[Any], bool]) -> Any:
        # A value of one of these exact types is neither awaitable nor an exception: no
        # call to ask (a page of 20 checkpoints has some 170 leaves).
        if type(value) not in _INERT and (isinstance(value, Exception) or is_awaitable(value)):
            return _SLOW
        coerced = self.coerce(value)
        if coerced is None or coerced is Undefined:
            return _SLOW
        return coerced


class ObjectField:
    """The resolver of a plain field whose type is an object or a list of objects
    (see the module docstring); `read` gives its value of a source."""

    __slots__ = ("_is_default", "in_list", "item_type", "object_type", "original", "read")

    def __init__(
        self,
        original: Callable[..., Any],
        read: Callable[[Any], Any],
        object_type: GraphQLObjectType,
        item_type: GraphQLOutputType | None,
        *,
        attribute: bool,
    ) -> None:
        self.original = original
        self.read = read
        self.object_type = object_type
        self.item_type = item_type  # None: not a list
        self.in_list = item_type is not None
        self._is_default = attribute  # Strawberry's tracing skips default resolvers

    def __call__(self, source: Any, info: Any, **kwargs: Any) -> Any:
        return self.original(source, info, **kwargs)

    def value(self, source: Any, non_null: bool, is_awaitable: Callable[[Any], bool]) -> Any:
        """The field's value of `source` (a list as a list), or _SLOW when it is not plain."""
        try:
            value = self.read(source)
        except Exception:  # the slow path raises it again, located
            return _SLOW
        if value is None:
            return _SLOW if non_null else None
        if not self.in_list:
            return _SLOW if isinstance(value, Exception) or is_awaitable(value) else value
        if type(value) is not list and type(value) is not tuple:
            return _SLOW
        for item in value:
            if item is None or isinstance(item, Exception) or is_awaitable(item):
                return _SLOW
        return value


def _reader(field: GraphQLField, handlers: bool) -> Callable[[Any], Any] | None:
    """How to read `field` of a source when it is plain, else None.

    Plain: Strawberry's default resolver (an attribute), or a synchronous method
    that takes only `self` (no Info, no arguments), with no field extension
    (permission classes are one) and no exception handler that could apply.
    """
    resolve = field.resolve
    definition = field.extensions.get("strawberry-definition")
    if resolve is None or field.args or not isinstance(definition, StrawberryField):
        return None
    if definition.extensions:
        return None
    resolver = definition.base_resolver
    if resolver is None:
        if definition.default_resolver is not getattr:
            return None
        if getattr(resolve, "__name__", None) != _BASIC_RESOLVER:
            return None
        return attrgetter(definition.python_name)
    if (
        handlers
        or resolver.is_async
        or isinstance(resolver.wrapped_func, staticmethod | classmethod)
        or resolver.self_parameter is None
        or len(resolver.signature.parameters) != 1
        or getattr(resolve, "__name__", None) != _METHOD_RESOLVER
    ):
        return None
    method: Callable[[Any], Any] = resolver.wrapped_func
    return method


def plain_leaf(field: GraphQLField, read: Callable[[Any], Any]) -> LeafField | None:
    """A `LeafField` for a leaf `field` whose value is `read(source)` wherever the
    document gives it no argument (its resolver's own arguments default to that);
    None when its type is not a leaf or a list of leaves."""
    return _leaf_field(field, read, bare=True)


def _leaf_field(
    field: GraphQLField, read: Callable[[Any], Any], *, bare: bool = False
) -> LeafField | None:
    if field.resolve is None:
        return None
    type_ = field.type
    non_null = isinstance(type_, GraphQLNonNull)
    named = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    in_list = isinstance(named, GraphQLList)
    items_non_null = False
    if isinstance(named, GraphQLList):
        items_non_null = isinstance(named.of_type, GraphQLNonNull)
        named = named.of_type.of_type if items_non_null else named.of_type
    if not isinstance(named, GraphQLScalarType | GraphQLEnumType):
        return None
    return LeafField(
        field.resolve,
        read,
        _enum_output(named) if isinstance(named, GraphQLEnumType) else named.coerce_output_value,
        non_null=non_null,
        in_list=in_list,
        items_non_null=items_non_null,
        attribute=isinstance(read, attrgetter),
        bare=bare,
    )


def _enum_output(enum: GraphQLEnumType) -> Callable[[Any], Any]:
    """The enum's `coerce_output_value`, by a look-up for a member of Strawberry's enum.

    Strawberry's compares the member's value with each of the enum's values in turn
    (through the `value` property of both): a history page's `source`, 20 times a
    page, cost about 1 % of its CPU (py-spy, bench/page_ab.py). The name found is
    the one Strawberry's finds first, made once here for each member; anything else
    goes to Strawberry's own.
    """
    coerce = enum.coerce_output_value
    wrapped = getattr(enum, "wrapped_cls", None)
    if wrapped is None:
        return coerce
    # By identity: members are singletons, and an enum's own __eq__/__hash__ may hold
    # two members equal (Strawberry's compares values, not members).
    names: dict[int, str] = {}
    for member in wrapped:
        try:
            names[id(member)] = coerce(member)
        except (ValueError, TypeError):  # not served: Strawberry's says
            pass

    def output(value: Any) -> Any:
        if type(value) is wrapped:
            name = names.get(id(value))
            if name is not None:
                return name
        return coerce(value)

    return output


def _object_field(field: GraphQLField, read: Callable[[Any], Any]) -> ObjectField | None:
    if field.resolve is None:
        return None
    type_ = field.type
    named = type_.of_type if isinstance(type_, GraphQLNonNull) else type_
    item_type = None
    if isinstance(named, GraphQLList):
        item_type = named.of_type
        named = item_type.of_type if isinstance(item_type, GraphQLNonNull) else item_type
    if not isinstance(named, GraphQLObjectType) or named.is_type_of is not None:
        return None
    return ObjectField(
        field.resolve, read, named, item_type, attribute=isinstance(read, attrgetter)
    )


def _plain_in(
    parent_type: GraphQLObjectType, details: FieldDetailsList
) -> tuple[LeafField | ObjectField | None, Any]:
    """The field's `LeafField` or `ObjectField` where this selection of it is completed
    directly (as `LeafExecutor.execute_field` decides), else None; and the field's type."""
    field = parent_type.fields.get(details[0].node.name.value)
    if field is None:
        return None, None
    resolve = field.resolve
    if type(resolve) is not LeafField and type(resolve) is not ObjectField:
        return None, field.type
    given = False  # a loop, not any() over a generator: made for every selection of a page
    for d in details:
        node = d.node
        if node.arguments or node.directives:
            given = True
            break
    if type(resolve) is LeafField and not (resolve.bare and given):
        return resolve, field.type
    if type(resolve) is ObjectField and not given:
        return resolve, field.type
    return None, field.type


def install_leaf_fields(schema: strawberry.Schema) -> list[str]:
    """Give every plain leaf field of `schema` a `LeafField` resolver, and every plain
    object field an `ObjectField` one; their names."""
    installed = []
    handlers = bool(schema.exception_handlers)
    for type_ in schema._schema.type_map.values():
        if not is_object_type(type_) or type_.name.startswith("__"):
            continue
        for name, field in type_.fields.items():
            read = _reader(field, handlers)
            if read is None:
                continue
            leaf = _leaf_field(field, read) or _object_field(field, read)
            if leaf is not None:
                field.resolve = leaf
                installed.append(f"{type_.name}.{name}")
    return installed


# How an object's selection is executed, in its order: (response name, the field's
# LeafField or ObjectField where this selection of it is plain, else None, the field's
# details, its type).
_Plan = list[tuple[str, "LeafField | ObjectField | None", FieldDetailsList, Any]]


class _Shared:
    """What every execution of one operation without directives collects alike: the
    fields selected under each object (`LeafExecutor.collect_subfields`, by the object
    type and the ids of the selecting field nodes, kept beside it so that no id is
    reused), and the plans of those selections (`LeafExecutor._plan`, by the id of the
    selection, kept beside it; `_UNPLANNED` until the first execution needs it)."""

    __slots__ = ("collected", "plans")

    def __init__(self) -> None:
        self.collected: dict[
            tuple[GraphQLObjectType, tuple[int, ...]],
            tuple[tuple[FieldNode, ...], CollectedFields],
        ] = {}
        self.plans: dict[int, tuple[GroupedFieldSet, GraphQLObjectType, Any]] = {}


_UNPLANNED: Final = object()
# Each operation's `_Shared` (None where its executions cannot share one), by the id of
# its AST node: kept as long as that node is (a document the schema keeps parsed, see
# Documents). By identity, not by a WeakKeyDictionary: AST nodes compare equal by
# content, and the ids `_Shared` keys on are those of one document's nodes.
_SHARED: dict[int, tuple[weakref.ref[OperationDefinitionNode], _Shared | None]] = {}


def _shared_of(operation: OperationDefinitionNode, fragments: dict[str, Any]) -> _Shared | None:
    """The `_Shared` of the executions of `operation` (None: they share nothing)."""
    key = id(operation)
    entry = _SHARED.get(key)
    if entry is not None and entry[0]() is operation:
        return entry[1]

    def forget(ref: weakref.ref[OperationDefinitionNode]) -> None:
        if _SHARED.get(key, (None,))[0] is ref:
            del _SHARED[key]

    shared = _Shared() if _without_directives(operation, fragments) else None
    _SHARED[key] = (weakref.ref(operation, forget), shared)
    return shared


def _without_directives(operation: OperationDefinitionNode, fragments: dict[str, Any]) -> bool:
    """Whether no selection of the operation, nor of any fragment it may spread, has a
    directive (nor a fragment argument): collecting its fields then depends on nothing
    but the document and the object types."""
    if operation.directives:
        return False
    sets: list[SelectionSetNode] = [operation.selection_set]
    sets += [details.definition.selection_set for details in fragments.values()]
    if any(details.definition.directives for details in fragments.values()):
        return False
    while sets:
        for selection in sets.pop().selections:
            if selection.directives:
                return False
            if isinstance(selection, FragmentSpreadNode):
                if getattr(selection, "arguments", None):
                    return False
            elif isinstance(selection, FieldNode | InlineFragmentNode):
                if selection.selection_set is not None:
                    sets.append(selection.selection_set)
    return True


# Awaitables settled in the background for a resolver whose executor is gone (see
# `_helpers`), kept until they are settled.
_SETTLING: set[asyncio.Future[Any]] = set()


def _helpers(executor: LeafExecutor) -> GraphQLResolveInfoHelpers:
    """The resolvers' `info.async_helpers` for `executor`, holding it weakly.

    graphql-core's hold its bound methods, which it holds in turn: a cycle that
    kept every operation's executor, and all it refers to (the context, the
    loaders, the collected fields), alive until the garbage collector's next
    pass. A history page left about 110 objects a request to it, so the
    collector ran every third page, mid-page, over all the page's live objects:
    0.25 ms a page in all, where the manager's own read of the page made it
    run once in 170 (gc.callbacks, in-process). Without the cycle an
    operation's objects go when it ends, as the manager's do.
    """
    ref = weakref.ref(executor)

    def track(values: Sequence[Any]) -> None:
        live = ref()
        if live is not None:
            live.track_async_work(values)
            return
        # Gone (no operation of it runs): settled all the same, as graphql-core would.
        awaitables = [v for v in values if executor_is_awaitable(v)]
        if awaitables:
            future = asyncio.gather(*awaitables, return_exceptions=True)
            _SETTLING.add(future)
            future.add_done_callback(_SETTLING.discard)

    executor_is_awaitable = executor.is_awaitable
    return GraphQLResolveInfoHelpers(gather=_gather, track=track)


def _gather(values: Sequence[Awaitable[Any]]) -> Awaitable[list[Any]]:
    return gather_with_cancel(*values)  # graphql-core's gather_async_work


class LeafExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, completing `LeafField`s and `ObjectField`s directly (see
    the module docstring), with resolver helpers that leave no reference cycle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.async_helpers = _helpers(self)

    # The operation's `_Shared` (None: its executions share nothing); `_UNPLANNED` until
    # first needed.
    _shared: Any = _UNPLANNED

    def _shared_of_operation(self) -> _Shared | None:
        shared = self._shared
        if shared is _UNPLANNED:
            shared = None
            if not (self.middleware_manager is not None and self.middleware_manager.middlewares):
                shared = _shared_of(self.operation, self.fragments)
            self._shared = shared
        return shared  # type: ignore[no-any-return]

    def collect_subfields(
        self, return_type: GraphQLObjectType, field_details_list: FieldDetailsList
    ) -> CollectedFields:
        """graphql-core's (memoized for this execution), shared by the operation's
        executions when it has no directive (see `_Shared`)."""
        shared = self._shared_of_operation()
        if shared is None:
            return super().collect_subfields(return_type, field_details_list)
        nodes = tuple(d.node for d in field_details_list)
        key = (return_type, tuple(map(id, nodes)))
        entry = shared.collected.get(key)
        if entry is not None:
            return entry[1]
        collected = super().collect_subfields(return_type, field_details_list)
        for details in field_details_list:
            if details.defer_usage is not None or details.fragment_variable_values is not None:
                return collected
        if collected.new_defer_usages or collected.forbidden_directive_instances:
            return collected
        shared.collected[key] = (nodes, collected)
        grouped = collected.grouped_field_set
        shared.plans[id(grouped)] = (grouped, return_type, _UNPLANNED)
        return collected

    # The plan of each selection executed so far (by its id, with the selection kept
    # alive beside it so that the id is not reused): made once per operation, not per
    # object of a page.
    _plans: dict[int, tuple[GroupedFieldSet, GraphQLObjectType, _Plan | None]] | None = None

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: GroupedFieldSet,
        position_context: Any,
    ) -> Awaitable[dict[str, Any]] | dict[str, Any]:
        """graphql-core's, with the selection's plain fields completed in this loop: no
        `execute_field` call and none of its look-ups for each of them (a page of 10
        threads has 50 leaves and 20 objects), and no `Path` for a leaf. Any other field
        goes through `execute_field`, and a plain one whose value is not plain through
        graphql-core's, as before."""
        plan = self._plan(parent_type, grouped_field_set)
        if plan is None:
            return super().execute_fields(
                parent_type, source_value, path, grouped_field_set, position_context
            )
        return self._execute_plan(plan, parent_type, source_value, path, position_context)

    def _execute_plan(
        self,
        plan: _Plan,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        position_context: Any,
    ) -> Awaitable[dict[str, Any]] | dict[str, Any]:
        """`execute_fields` of a selection whose plan is `plan`."""
        results: dict[str, Any] = {}
        is_awaitable = self.is_awaitable
        awaitable_fields: list[str] = []
        try:
            for response_name, plain, field_details_list, return_type in plan:
                field_path = None
                if type(plain) is LeafField:
                    result = plain.complete(source_value, is_awaitable)
                elif type(plain) is ObjectField:
                    field_path = Path(path, response_name, parent_type.name)
                    result = self._object_field(
                        plain,
                        return_type,
                        field_details_list,
                        field_path,
                        source_value,
                        position_context,
                    )
                else:
                    result = _SLOW
                if result is _SLOW:
                    # graphql-core's own, from the start (LeafExecutor.execute_field would
                    # only read a plain field again).
                    execute = self.execute_field if plain is None else super().execute_field
                    result = execute(
                        parent_type,
                        source_value,
                        field_details_list,
                        field_path or Path(path, response_name, parent_type.name),
                        position_context,
                    )
                    if result is Undefined:
                        continue
                results[response_name] = result
                if is_awaitable(result):
                    awaitable_fields.append(response_name)
        except Exception:
            if awaitable_fields:  # settled, as they may fail too
                self.settle_in_background([results[name] for name in awaitable_fields])
            raise
        if not awaitable_fields:
            return results
        return self._await_fields(results, awaitable_fields)

    async def _await_fields(
        self, results: dict[str, Any], awaitable_fields: list[str]
    ) -> dict[str, Any]:
        """`results` with the awaitable fields' values awaited (graphql-core's way)."""
        if len(awaitable_fields) == 1:
            name = awaitable_fields[0]
            results[name] = await results[name]
        else:
            values = await gather_with_cancel(*(results[name] for name in awaitable_fields))
            results.update(zip(awaitable_fields, values, strict=True))
        return results

    def _plan(
        self, parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet
    ) -> _Plan | None:
        """The selection's plan (None: no field of it is plain, or the operation has
        resolver middleware: graphql-core's loop)."""
        shared = self._shared
        if shared is not None and shared is not _UNPLANNED:
            # A selection every execution of the operation shares: its plan, made once.
            found = shared.plans.get(id(grouped_field_set))
            if found is not None and found[0] is grouped_field_set and found[1] is parent_type:
                if found[2] is _UNPLANNED:
                    made = self._made_plan(parent_type, grouped_field_set)
                    shared.plans[id(grouped_field_set)] = (grouped_field_set, parent_type, made)
                    return made
                return found[2]  # type: ignore[no-any-return]
        plans = self._plans
        if plans is None:
            plans = self._plans = {}
        entry = plans.get(id(grouped_field_set))
        if entry is not None and entry[0] is grouped_field_set and entry[1] is parent_type:
            return entry[2]
        plan = self._made_plan(parent_type, grouped_field_set)
        plans[id(grouped_field_set)] = (grouped_field_set, parent_type, plan)
        return plan

    def _made_plan(
        self, parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet
    ) -> _Plan | None:
        plan: _Plan | None = None
        if not (self.middleware_manager is not None and self.middleware_manager.middlewares):
            plan = []
            any_plain = False
            for name, details in grouped_field_set.items():
                plain, type_ = _plain_in(parent_type, details)
                plan.append((name, plain, details, type_))
                any_plain = any_plain or plain is not None
            if not any_plain:
                plan = None
        return plan

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: FieldDetailsList,
        path: Path,
        position_context: Any,
    ) -> Awaitable[Any] | Any:
        node = field_details_list[0].node
        field = parent_type.fields.get(node.name.value)
        resolve = field.resolve if field is not None else None
        if type(resolve) is LeafField and not (
            self.middleware_manager is not None and self.middleware_manager.middlewares
        ):
            # Arguments, and a @stream on a list, are graphql-core's to honour.
            if not (
                resolve.bare
                and any(d.node.arguments or d.node.directives for d in field_details_list)
            ):
                value = resolve.complete(source, self.is_awaitable)
                if value is not _SLOW:
                    return value
        elif (
            type(resolve) is ObjectField
            and not (self.middleware_manager is not None and self.middleware_manager.middlewares)
            and not any(d.node.arguments or d.node.directives for d in field_details_list)
        ):
            value = self._object_field(
                resolve,
                field.type,  # type: ignore[union-attr]
                field_details_list,
                path,
                source,
                position_context,
            )
            if value is not _SLOW:
                return value
        return super().execute_field(
            parent_type, source, field_details_list, path, position_context
        )

    def _object_field(
        self,
        resolve: ObjectField,
        return_type: GraphQLOutputType,
        field_details_list: FieldDetailsList,
        path: Path,
        source: Any,
        position_context: Any,
    ) -> Any:
        """A plain object field of `source` completed directly, or _SLOW when its value is
        not plain (nothing is executed then)."""
        value = resolve.value(source, isinstance(return_type, GraphQLNonNull), self.is_awaitable)
        if value is None or value is _SLOW:
            return value
        if resolve.item_type is None:
            return self._object(
                return_type, resolve.object_type, field_details_list, path, value, position_context
            )
        return self._objects(
            resolve, return_type, field_details_list, path, value, position_context
        )

    def _subselection(
        self, object_type: GraphQLObjectType, field_details_list: FieldDetailsList
    ) -> tuple[GroupedFieldSet, _Plan | None] | None:
        """The fields selected on `object_type` under `field_details_list`, and their plan,
        when graphql-core would execute them with `execute_fields` and no delivery group
        (no @defer among them); else None. Made once per operation, not per object of a
        page: graphql-core's `collect_and_execute_subfields` looks its collected fields
        up, then the plan is looked up, for every object (20 to 40 of them a page)."""
        subselections = self._subselections
        if subselections is None:
            subselections = self._subselections = {}
        key = (object_type, id(field_details_list))
        entry = subselections.get(key)
        if entry is not None:
            return entry[1]
        grouped_field_set, new_defer_usages, _forbidden = self.collect_subfields(
            object_type, field_details_list
        )
        found = None
        if not new_defer_usages:
            found = (grouped_field_set, self._plan(object_type, grouped_field_set))
        # The list is kept alive beside it so that its id is not reused (graphql-core's way).
        subselections[key] = (field_details_list, found)
        return found

    # `_subselection`'s, by object type and the id of the field details list.
    _subselections: (
        dict[
            tuple[GraphQLObjectType, int],
            tuple[FieldDetailsList, tuple[GroupedFieldSet, _Plan | None] | None],
        ]
        | None
    ) = None

    def _object(
        self,
        return_type: GraphQLOutputType,
        object_type: GraphQLObjectType,
        field_details_list: FieldDetailsList,
        path: Path,
        value: Any,
        position_context: Any,
    ) -> Any:
        """`value` completed as `object_type`, errors handled as `return_type`'s at `path`
        (as graphql-core's execute_field, and its complete_list_item_value, do).

        Outside a delivery group, and with no @defer in its selection, its fields are
        executed as graphql-core's `collect_and_execute_subfields` would (by
        `execute_fields`, with no delivery group), but with the selection and plan
        found once per operation (`_subselection`)."""
        try:
            sub = None
            if position_context is None:
                sub = self._subselection(object_type, field_details_list)
            if sub is None:
                completed = self.collect_and_execute_subfields(
                    object_type, field_details_list, path, value, position_context
                )
            elif sub[1] is None:
                completed = super().execute_fields(object_type, value, path, sub[0], None)
            else:
                completed = self._execute_plan(sub[1], object_type, value, path, None)
        except Exception as raw_error:
            self.handle_field_error(raw_error, return_type, field_details_list, path)
            return None
        if self.is_awaitable(completed):
            return self._await_object(completed, return_type, field_details_list, path)
        return completed

    async def _await_object(
        self,
        completed: Awaitable[Any],
        return_type: GraphQLOutputType,
        field_details_list: FieldDetailsList,
        path: Path,
    ) -> Any:
        try:
            return await completed
        except Exception as raw_error:
            self.handle_field_error(raw_error, return_type, field_details_list, path)
            return None

    def _objects(
        self,
        resolve: ObjectField,
        return_type: GraphQLOutputType,
        field_details_list: FieldDetailsList,
        path: Path,
        items: Sequence[Any],
        position_context: Any,
    ) -> Any:
        """`items` completed as a list of `resolve.object_type` (as graphql-core's
        complete_iterable_value does), errors handled as `return_type`'s at `path`."""
        assert resolve.item_type is not None
        completed: list[Any] = []
        awaitable: list[int] = []
        try:
            for index, item in enumerate(items):
                value = self._object(
                    resolve.item_type,
                    resolve.object_type,
                    field_details_list,
                    path.add_key(index, None),
                    item,
                    position_context,
                )
                if self.is_awaitable(value):
                    awaitable.append(index)
                completed.append(value)
        except Exception as raw_error:
            if awaitable:  # settled, as they may fail too
                self.settle_in_background([completed[i] for i in awaitable])
            self.handle_field_error(raw_error, return_type, field_details_list, path)
            return None
        if not awaitable:
            return completed
        return self._await_objects(completed, awaitable, return_type, field_details_list, path)

    async def _await_objects(
        self,
        completed: list[Any],
        awaitable: list[int],
        return_type: GraphQLOutputType,
        field_details_list: FieldDetailsList,
        path: Path,
    ) -> Any:
        try:
            if len(awaitable) == 1:
                completed[awaitable[0]] = await completed[awaitable[0]]
            else:
                values = await gather_with_cancel(*(completed[i] for i in awaitable))
                for index, value in zip(awaitable, values, strict=True):
                    completed[index] = value
        except Exception as raw_error:
            self.handle_field_error(raw_error, return_type, field_details_list, path)
            return None
        return completed
