"""What a filter of threads or runs may hold: checked before any I/O, as `inputs.py` checks ids.

    ids              thread ids (the thread id rule), at most 1,000
    statuses         at most 1,000 (listed more than once: counted once)
    metadataHasKeys  at most 1,000 keys
    metadata         a JSON object of at most 100 values (keys' values and array
                     items, at every level; in a thread filter, of all its metadata
                     objects together), its arrays and objects nested at most 6
                     levels deep (the object itself included)
    anyOf, not       at most 100 sub-filters in a filter, all levels together,
                     nested at most 10 levels deep
    text             storable anywhere (no NUL, no lone surrogate)

An empty `ids`, `statuses` or `anyOf` matches nothing (one of none, the
logical value of an empty OR); an empty `metadataHasKeys` matches every
thread. How deep `anyOf` and `not` may nest is the query depth limit's
business, checked where the GraphQL input is read (`resolvers/filters.py`);
past 10 levels they are refused here whatever that limit (0 turns it off).
The bounds keep one filter's SQL small: a list travels as one parameter, and
the sub-filters and metadata values bound the conditions (SQLite refuses an
expression more than 1,000 deep, and a statement whose subqueries, one an
array level of metadata, nest past its parser's stack).

Anything else is a BadInputError (BAD_USER_INPUT) that names the argument,
with its path (`filter.anyOf[1].ids`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from code_hero.errors import BadInputError
from code_hero.inputs import check_text, check_thread_id
from code_hero.persistence.records import RunFilter, ThreadFilter

__all__ = [
    "MAX_FILTER_NESTING",
    "MAX_FILTER_VALUES",
    "MAX_METADATA_DEPTH",
    "MAX_METADATA_VALUES",
    "MAX_SUBFILTERS",
    "check_run_filter",
    "check_thread_filter",
]

MAX_FILTER_VALUES = 1000
# SQLite's parser overflowed near 100 levels of not, and at 16 around some of the deepest
# metadata allowed (an array level is a subquery); at 10 every shape allowed compiles.
MAX_FILTER_NESTING = 10
MAX_SUBFILTERS = 100
MAX_METADATA_VALUES = 100
MAX_METADATA_DEPTH = 6


def check_thread_filter(flt: ThreadFilter, name: str = "filter") -> ThreadFilter:
    """`flt` with its ids checked (and lists deduplicated); BadInputError naming the field."""
    budget = [MAX_SUBFILTERS, MAX_METADATA_VALUES]  # sub-filters, metadata values left
    return _thread(flt, name, budget, 0)


def check_run_filter(flt: RunFilter, name: str = "filter") -> RunFilter:
    """`flt` if it is within the rules; BadInputError naming the field."""
    check_text(flt.user_id, f"{name}.userId")
    check_text(flt.graph, f"{name}.graph")
    statuses = _values(flt.statuses, f"{name}.statuses")
    metadata = _object(flt.metadata, f"{name}.metadata")
    return replace(flt, statuses=statuses, metadata=metadata)


def _thread(flt: ThreadFilter, name: str, budget: list[int], depth: int) -> ThreadFilter:
    if depth > MAX_FILTER_NESTING:
        raise BadInputError(f"{name} nests anyOf/not more than {MAX_FILTER_NESTING} levels deep")
    check_text(flt.user_id, f"{name}.userId")
    ids = _values(flt.ids, f"{name}.ids")
    if ids is not None:
        ids = tuple(check_thread_id(i, f"{name}.ids") for i in ids)
    keys = _values(flt.metadata_has_keys, f"{name}.metadataHasKeys")
    check_text(keys, f"{name}.metadataHasKeys")
    any_of = None
    if flt.any_of is not None:
        any_of = tuple(
            _thread(sub, f"{name}.anyOf[{i}]", _spend(budget, name), depth + 1)
            for i, sub in enumerate(flt.any_of)
        )
    not_ = (
        None
        if flt.not_ is None
        else _thread(flt.not_, f"{name}.not", _spend(budget, name), depth + 1)
    )
    metadata = _object(flt.metadata, f"{name}.metadata", budget)
    statuses = _values(flt.statuses, f"{name}.statuses")
    if (
        ids is None
        and keys is None
        and statuses is None
        and any_of is None
        and not_ is None
        and metadata is flt.metadata
    ):
        return flt  # nothing to deduplicate: the same filter (replace's copy costs 7 us)
    return replace(
        flt,
        metadata=metadata,
        ids=ids,
        statuses=statuses,
        metadata_has_keys=keys,
        any_of=any_of,
        not_=not_,
    )


def _spend(budget: list[int], name: str) -> list[int]:
    budget[0] -= 1
    if budget[0] < 0:
        raise BadInputError(
            f"{name} holds more than {MAX_SUBFILTERS} sub-filters (anyOf items and not, "
            "at every level together)"
        )
    return budget


def _values(values: Sequence[Any] | None, name: str) -> tuple[Any, ...] | None:
    if values is None:
        return None
    unique = tuple(dict.fromkeys(values))
    if len(unique) > MAX_FILTER_VALUES:
        raise BadInputError(f"{name} may hold at most {MAX_FILTER_VALUES} values")
    return unique


def _object(
    value: Mapping[str, Any] | None, name: str, budget: list[int] | None = None
) -> Mapping[str, Any] | None:
    """`value` if within the bounds; with a thread filter's `budget`, its values are
    spent from the whole filter's (each array item is a scan on SQLite: every metadata
    object of an anyOf of 100 at 100 values took seconds a row)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise BadInputError(f"{name} must be a JSON object")
    check_text(value, name)
    values, depth = _shape(value)
    if not _finite(value):  # NaN is stored nowhere: JSON has no such number
        raise BadInputError(f"{name} holds a number that is not finite (NaN or Infinity)")
    if budget is not None:
        budget[1] -= values
    if values > MAX_METADATA_VALUES or (budget is not None and budget[1] < 0):
        raise BadInputError(
            f"{name} may hold at most {MAX_METADATA_VALUES} values "
            "(keys' values and array items, at every level; all the metadata of a "
            "filter together)"
        )
    if depth > MAX_METADATA_DEPTH:
        raise BadInputError(
            f"{name} nests arrays and objects more than {MAX_METADATA_DEPTH} levels deep"
        )
    return value


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def _shape(value: Any) -> tuple[int, int]:
    """How many values a JSON value holds, and how deep its arrays and objects nest."""
    if isinstance(value, Mapping):
        items: Any = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return 0, 0
    values, depth = 0, 0
    for item in items:
        inner, inner_depth = _shape(item)
        values, depth = values + 1 + inner, max(depth, inner_depth)
    return values, depth + 1
