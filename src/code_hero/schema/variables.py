"""How much a request's variables may hold, checked before anything converts them.

graphql-core coerces each variable, and Strawberry converts each input object
into its dataclass, item by item, on the event loop: 200,000 `ThreadFilter`s in
an `anyOf` list (800 KB, under the body limit) held every request for 25 s
before the filter's own check (at most 100 sub-filters) could refuse them, long
enough for the health probe to time out and fail the database over (an outside
audit). Counting them first is a walk over the parsed JSON, guided by the
variables' declared types, that stops at the first excess: a list longer than
any input takes, or more input objects in all than any request needs.
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

__all__ = ["MAX_INPUT_OBJECTS", "MAX_LIST_ITEMS", "check_input_size"]

# Input objects a request's variables may hold in all (what converting is slow for:
# each becomes a dataclass): 30 aliased fields of 100 sub-filters each are 3,030.
MAX_INPUT_OBJECTS = 10_000
# Items one list may hold: ten times the most any input takes (a filter's `ids`,
# `metadataHasKeys`: 1,000), so each input's own rule still judges a list near it.
# JSON values are taken whole, not counted.
MAX_LIST_ITEMS = 10_000


def _first_excess(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
) -> str | None:
    """What the variables hold past a limit, or None; a walk guided by the declared
    types that stops at the first excess."""
    operation = get_operation_ast(document, operation_name)
    if operation is None or not variables:
        return None
    objects = 0

    def walk(value: Any, type_: GraphQLInputType) -> str | None:
        nonlocal objects
        if isinstance(type_, GraphQLNonNull):
            type_ = type_.of_type
        if isinstance(type_, GraphQLList):
            if not isinstance(value, list):
                return walk(value, type_.of_type)  # a lone item: a list of one
            if len(value) > MAX_LIST_ITEMS:
                return f"a list of {len(value)} items (at most {MAX_LIST_ITEMS})"
            for item in value:
                if (excess := walk(item, type_.of_type)) is not None:
                    return excess
        elif isinstance(type_, GraphQLInputObjectType) and isinstance(value, dict):
            objects += 1
            if objects > MAX_INPUT_OBJECTS:
                return f"more than {MAX_INPUT_OBJECTS} input objects in all"
            for name, field_value in value.items():
                field = type_.fields.get(name)
                if field is not None:  # an unknown field: coercion refuses it
                    if (excess := walk(field_value, field.type)) is not None:
                        return excess
        return None

    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        type_ = type_from_ast(schema, definition.type)
        if name in variables and type_ is not None:
            excess = walk(variables[name], type_)  # type: ignore[arg-type]
            if excess is not None:
                return f"${name} holds {excess}"
    return None


def check_input_size(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: Mapping[str, Any] | None,
) -> None:
    """BadInputError when the variables hold a list longer than MAX_LIST_ITEMS or more
    than MAX_INPUT_OBJECTS input objects: more than any request needs."""
    excess = _first_excess(schema, document, operation_name, variables)
    if excess is not None:
        raise BadInputError(f"{excess}: more than any input takes")
