"""How much a request's variables may hold, checked before anything converts them.

graphql-core coerces each variable, and Strawberry converts each input object
into its dataclass, item by item, on the event loop: 200,000 `ThreadFilter`s in
an `anyOf` list (800 KB, under the body limit) held every request for 25 s
before the filter's own check (at most 100 sub-filters) could refuse them, long
enough for the health probe to time out and fail the database over (an outside
audit). Counting them first is a walk over the parsed JSON, guided by the
variables' declared types, that stops at the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphql import (
    DocumentNode,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLSchema,
)
from graphql.utilities import get_operation_ast, type_from_ast

from code_hero.errors import BadInputError

__all__ = ["MAX_INPUT_VALUES", "check_input_size", "input_values"]

# List items and input-object fields a request's variables may hold, outside JSON
# values (a JSON scalar is one value, taken whole). The largest list an input takes
# is 1,000 (a filter's `ids`, `metadataHasKeys`).
MAX_INPUT_VALUES = 10_000


def input_values(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
    limit: int = MAX_INPUT_VALUES,
) -> int:
    """The list items and input-object fields the operation's variables hold where
    their declared types make them lists and input objects, counted up to `limit + 1`."""
    operation = get_operation_ast(document, operation_name)
    if operation is None or not variables:
        return 0
    total = 0

    def walk(value: Any, type_: GraphQLInputType) -> None:
        nonlocal total
        if isinstance(type_, GraphQLNonNull):
            type_ = type_.of_type
        if isinstance(type_, GraphQLList):
            items = value if isinstance(value, list) else [value]  # a lone item: a list of one
            total += len(items) if isinstance(value, list) else 0
            for item in items:
                if total > limit:
                    return
                walk(item, type_.of_type)
        elif isinstance(type_, GraphQLInputObjectType) and isinstance(value, dict):
            total += len(value)
            for name, field_value in value.items():
                if total > limit:
                    return
                field = type_.fields.get(name)
                if field is not None:  # an unknown field: coercion refuses it
                    walk(field_value, field.type)

    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        type_ = type_from_ast(schema, definition.type)
        if name in variables and type_ is not None:
            walk(variables[name], type_)  # type: ignore[arg-type]
        if total > limit:
            return limit + 1
    return total


def check_input_size(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
) -> None:
    """BadInputError when the variables hold more than MAX_INPUT_VALUES values."""
    if input_values(schema, document, operation_name, variables) > MAX_INPUT_VALUES:
        raise BadInputError(
            f"the variables hold more than {MAX_INPUT_VALUES} list items and input fields: "
            "no input takes that many (a filter's ids: 1,000 at most)"
        )
