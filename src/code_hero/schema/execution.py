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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from operator import attrgetter
from typing import Any, Final

import strawberry
from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    Undefined,
    is_object_type,
)
from graphql.execution.collect_fields import FieldDetailsList
from graphql.pyutils import Path
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.types.field import StrawberryField

__all__ = ["LeafExecutor", "LeafField", "install_leaf_fields", "plain_leaf"]

# A value the fast path does not complete: graphql-core's path does, from the start.
_SLOW: Final = object()
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
        if isinstance(value, Exception) or is_awaitable(value):
            return _SLOW
        coerced = self.coerce(value)
        if coerced is None or coerced is Undefined:
            return _SLOW
        return coerced


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
        named.coerce_output_value,
        non_null=non_null,
        in_list=in_list,
        items_non_null=items_non_null,
        attribute=isinstance(read, attrgetter),
        bare=bare,
    )


def install_leaf_fields(schema: strawberry.Schema) -> list[str]:
    """Give every plain leaf field of `schema` a `LeafField` resolver; their names."""
    installed = []
    handlers = bool(schema.exception_handlers)
    for type_ in schema._schema.type_map.values():
        if not is_object_type(type_) or type_.name.startswith("__"):
            continue
        for name, field in type_.fields.items():
            read = _reader(field, handlers)
            leaf = None if read is None else _leaf_field(field, read)
            if leaf is not None:
                field.resolve = leaf
                installed.append(f"{type_.name}.{name}")
    return installed


class LeafExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, completing `LeafField`s directly (see the module docstring)."""

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
        return super().execute_field(
            parent_type, source, field_details_list, path, position_context
        )
