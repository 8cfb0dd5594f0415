"""The contract's scalars: `DateTime` (ISO 8601, UTC) and `JSON` (any JSON value)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import strawberry
from strawberry.scalars import JSON
from strawberry.types.scalar import ScalarDefinition

from code_hero.errors import BadInputError
from code_hero.inputs import MAX_JSON_DEPTH, check_json

__all__ = ["JSON", "SCALARS", "parse_datetime", "serialize_datetime"]


def serialize_datetime(value: datetime) -> str:
    """ISO 8601 in UTC (a naive time is taken as UTC), as `isoformat()` writes it."""
    if value.tzinfo is UTC and type(value) is datetime:
        # Every time the registry reads (twenty a thread-list page): no conversion to make.
        return orjson.dumps(value)[1:-1].decode()
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # orjson writes the same text (+00:00; microseconds unless 0) in less than half the
    # instructions: isoformat() formats each field with C's printf (14,600 a call,
    # two a thread: 5 % of a thread-list page; callgrind).
    value = value.astimezone(UTC)
    if type(value) is not datetime:  # orjson refuses subclasses (pendulum, freezegun...)
        return value.isoformat()
    return orjson.dumps(value)[1:-1].decode()


def parse_datetime(value: Any) -> datetime:
    """An ISO 8601 string with a timezone, as an aware UTC datetime."""
    if not isinstance(value, str):
        raise BadInputError(f"DateTime must be an ISO 8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInputError(
            f"DateTime {value!r} is not ISO 8601 (e.g. 2025-01-31T12:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        raise BadInputError(f"DateTime {value!r} has no timezone: add Z or an offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise BadInputError(f"DateTime {value!r} is out of range in UTC") from None


DATETIME: ScalarDefinition = strawberry.scalar(
    name="DateTime",
    description="A point in time: ISO 8601 with a timezone, served in UTC.",
    serialize=serialize_datetime,
    parse_value=parse_datetime,
)

JSON_SCALAR: ScalarDefinition = strawberry.scalar(
    name="JSON",
    description=(
        "Any JSON value: object, array, string, number, boolean or null. As input: finite "
        f"numbers only (no NaN, no Infinity), nested at most {MAX_JSON_DEPTH} levels."
    ),
    serialize=lambda value: value,
    # Every JSON argument, as a variable or a literal (graphql-core parses a literal
    # with `parse_value` too): finite numbers, bounded nesting (inputs.check_json).
    parse_value=check_json,
)

# For StrawberryConfig(scalar_map=...): Python type -> GraphQL scalar.
SCALARS: dict[object, ScalarDefinition] = {datetime: DATETIME, JSON: JSON_SCALAR}
