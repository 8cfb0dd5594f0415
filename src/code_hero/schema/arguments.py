"""Resolvers of their own called with their arguments as Strawberry passes them, without
Strawberry's wrapper.

Strawberry gives every field with a resolver of its own a wrapper that, on each
call, converts every argument given through `convert_argument` (which runs a
`from strawberry.relay.types import ...` every time, and looks the argument's
GraphQL name up through the name converter), builds the chain of field
extensions, and, for an async resolver, adds a coroutine of its own around the
resolver's: 8.6 % of a history page's execution, 5.3 % in the argument
conversion alone (py-spy, bench/gateway.py), paid by `thread`, `threads` and
`checkpoints` on every request.

`install_argument_resolvers` gives each field whose resolver Strawberry would
call with nothing between (no field extension, so no permission class; no
exception handler in the schema) a `DirectResolver`, made once when the
schema is built, that does what that wrapper does, in the same order and
with Strawberry's own conversion, but decides once what each argument needs:

- an argument whose type is a scalar (not a GlobalID) or an enum, or an
  optional one, is passed as graphql-core gives it, which is what
  `convert_argument` returns for it (null and UNSET included);
- an input object (or an optional one) whose fields are all passed as given
  is built from a plan made once (the fields' GraphQL and Python names, the
  implicit None of those without a default), as `convert_argument` builds it
  with a name look-up and a type resolution a field at every call: 2.6 % of a
  `startRun`'s CPU, its `StartRunInput` alone (cProfile, issue 15);
- any other (a nested input object, a list, a GlobalID, a `Maybe`) goes through
  `convert_argument`, with the Info and the path Strawberry gives it, but for a
  null (what an optional argument the document leaves out defaults to: a
  `threads` page's `filter`), which `convert_argument` returns as it is for any
  type but a `Maybe`;
- an argument the document leaves out, with no default, is not passed;
- the source is passed as `self`, `root` or `parent`, and the Info as the
  resolver's `info` parameter, as Strawberry's `get_arguments` does.

The resolver's value is returned as it is: graphql-core awaits a coroutine
itself, and completes values and errors (message, path, locations, codes) as
it would have.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING
from typing import Any, Final

import strawberry
from graphql import GraphQLField, is_object_type
from strawberry import UNSET
from strawberry.relay.types import GlobalID
from strawberry.scalars import is_scalar
from strawberry.schema.config import StrawberryConfig
from strawberry.types.arguments import convert_argument
from strawberry.types.base import (
    StrawberryMaybe,
    StrawberryOptional,
    StrawberryType,
    has_object_definition,
)
from strawberry.types.enum import StrawberryEnumDefinition, has_enum_definition
from strawberry.types.field import StrawberryField
from strawberry.types.lazy_type import LazyType
from strawberry.types.scalar import ScalarDefinition, ScalarWrapper

__all__ = ["DirectResolver", "FlatInput", "install_argument_resolvers"]

# The names Strawberry gives the wrapper of a field with a resolver of its own.
_WRAPPERS: Final = frozenset({"_resolver", "_async_resolver"})

ScalarRegistry = Mapping[object, ScalarWrapper | ScalarDefinition]


class DirectResolver:
    """The graphql-core resolver of a field with a resolver of its own: its arguments
    converted as Strawberry converts them, then the resolver called (see the module
    docstring)."""

    __slots__ = (
        "_field",
        "_info_class",
        "_info_name",
        "_is_default",
        "_null_as_given",
        "_parent_names",
        "_pass_self",
        "arguments",
        "config",
        "function",
        "scalar_registry",
    )

    def __init__(
        self,
        field: StrawberryField,
        function: Callable[..., Any],
        config: StrawberryConfig,
        scalar_registry: ScalarRegistry,
    ) -> None:
        resolver = field.base_resolver
        assert resolver is not None
        self._field = field
        self.function = function
        self.config = config
        self.scalar_registry = scalar_registry
        self._info_class = config.info_class
        self._pass_self = resolver.self_parameter is not None
        self._parent_names = tuple(
            parameter.name
            for parameter in (resolver.parent_parameter, resolver.root_parameter)
            if parameter is not None
        )
        self._info_name = None if resolver.info_parameter is None else resolver.info_parameter.name
        # (GraphQL name, Python name, None when passed as it is, a FlatInput, else its
        # type for `convert_argument`).
        self.arguments: tuple[tuple[str, str, Any], ...] = tuple(
            (
                config.name_converter.from_argument(argument),
                argument.python_name,
                None
                if _as_given(argument.type, scalar_registry)
                else FlatInput.of(argument.type, config, scalar_registry) or argument.type,
            )
            for argument in field.arguments
        )
        # The arguments converted by `convert_argument` whose null it returns as it is.
        self._null_as_given = frozenset(
            config.name_converter.from_argument(argument)
            for argument in field.arguments
            if _null_as_given(argument.type)
        )
        self._is_default = False  # as Strawberry marks a field with a resolver of its own

    def __call__(self, source: Any, info: Any, **kwargs: Any) -> Any:
        strawberry_info = self._info_class(_raw_info=info, _field=self._field)
        values: dict[str, Any] = {}
        for name, python_name, type_ in self.arguments:
            if name not in kwargs:
                continue
            value = kwargs[name]
            if type(type_) is FlatInput:
                value = type_(value)
            elif type_ is not None and not (value is None and name in self._null_as_given):
                try:
                    value = convert_argument(
                        value,
                        type_,
                        self.scalar_registry,
                        self.config,
                        strawberry_info,
                        path=(name,),
                    )
                except Exception as exc:
                    if self._field.is_async:  # raised from its awaitable, as Strawberry does
                        return _raising(exc)
                    raise
            values[python_name] = value
        for parent_name in self._parent_names:
            values[parent_name] = source
        if self._info_name is not None:
            values[self._info_name] = strawberry_info
        if self._pass_self:
            return self.function(source, **values)
        return self.function(**values)


class FlatInput:
    """Builds an input object whose fields all pass as given, as `convert_argument`
    builds it: the fields the value names, None for the others without a default, the
    value itself when it is None or UNSET."""

    __slots__ = ("cls", "fields", "implicit")

    def __init__(self, cls: type, fields: tuple[tuple[str, str], ...], implicit: dict[str, None]):
        self.cls = cls
        self.fields = fields  # (GraphQL name, Python name)
        self.implicit = implicit

    @classmethod
    def of(
        cls, type_: StrawberryType | type, config: StrawberryConfig, scalars: ScalarRegistry
    ) -> FlatInput | None:
        """The plan of `type_` (optional or not), None when it is no such input object."""
        if isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe):
            type_ = type_.of_type
        if not isinstance(type_, type) or not has_object_definition(type_):
            return None
        definition = type_.__strawberry_definition__
        if not definition.is_input or definition.from_input is not None:
            return None
        if definition.is_graphql_generic:
            return None
        fields = []
        for field in definition.fields:
            if not _as_given(field.resolve_type(type_definition=definition), scalars):
                return None
            fields.append((config.name_converter.from_field(field), field.python_name))
        implicit = {
            field.python_name: None
            for field in definition.fields
            if field.default_value is MISSING and field.default_factory is MISSING
        }
        return cls(type_, tuple(fields), implicit)

    def __call__(self, value: Any) -> Any:
        if value is None or value is UNSET:
            return value
        kwargs = dict(self.implicit)
        for graphql_name, python_name in self.fields:
            if graphql_name in value:
                kwargs[python_name] = value[graphql_name]
        return self.cls(**kwargs)


async def _raising(exc: Exception) -> Any:
    """An async field's argument that failed to convert: Strawberry converts inside the
    resolver's coroutine, so the error comes from an awaitable, and graphql-core cancels
    the field's async siblings as it does for any awaited error."""
    raise exc


def _as_given(type_: StrawberryType | type, scalar_registry: ScalarRegistry) -> bool:
    """Whether `convert_argument` returns any value of `type_` as it is: a scalar other
    than GlobalID, an enum, or an optional one (not a `Maybe`, which it wraps)."""
    if isinstance(type_, StrawberryMaybe):
        return False
    if isinstance(type_, StrawberryOptional):
        type_ = type_.of_type
    if isinstance(type_, LazyType):
        type_ = type_.resolve_type()
    if type_ is GlobalID:
        return False
    return (
        is_scalar(type_, scalar_registry)
        or isinstance(type_, StrawberryEnumDefinition)
        or has_enum_definition(type_)
    )


def _null_as_given(type_: StrawberryType | type) -> bool:
    """Whether `convert_argument` returns a null of `type_` as it is: unless it is (or,
    optional, holds) a `Maybe`, which it wraps or refuses."""
    while isinstance(type_, StrawberryOptional) and not isinstance(type_, StrawberryMaybe):
        type_ = type_.of_type
    return not isinstance(type_, StrawberryMaybe)


def _direct(field: GraphQLField, schema: strawberry.Schema) -> DirectResolver | None:
    """A `DirectResolver` for `field` where Strawberry's wrapper would call its resolver
    with nothing between, else None."""
    definition = field.extensions.get("strawberry-definition")
    if not isinstance(definition, StrawberryField) or definition.extensions:
        return None
    if getattr(field.resolve, "__name__", None) not in _WRAPPERS or field.subscribe is not None:
        return None
    resolver = definition.base_resolver
    if resolver is None or not callable(resolver.wrapped_func):
        return None
    converter = schema.schema_converter
    return DirectResolver(
        definition, resolver.wrapped_func, schema.config, converter.scalar_registry
    )


def install_argument_resolvers(schema: strawberry.Schema) -> list[str]:
    """Give every field of `schema` whose resolver Strawberry would call with nothing
    between a `DirectResolver`; their names. None when the schema has exception
    handlers (Strawberry's wrapper applies them)."""
    if schema.exception_handlers:
        return []
    installed = []
    for type_ in schema._schema.type_map.values():
        if not is_object_type(type_) or type_.name.startswith("__"):
            continue
        for name, field in type_.fields.items():
            direct = _direct(field, schema)
            if direct is not None:
                field.resolve = direct
                installed.append(f"{type_.name}.{name}")
    return installed
