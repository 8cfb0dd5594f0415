"""What a caller may send: the rules for ids and text, checked before any I/O.

    thread id       1-128 characters of A-Z a-z 0-9 . _ : -
    checkpoint id   the same rule (LangGraph's are UUIDs)
    run id          a UUID, 8-4-4-4-12 hex digits (the gateway makes every one)
    text            no NUL (U+0000) and no lone surrogate (U+D800-DFFF), in
                    strings and in JSON keys and values
    metadata        a JSON object, its text as above
    a JSON value    (every argument of type JSON) finite numbers only (NaN and
                    Infinity are not JSON), nested at most MAX_JSON_DEPTH levels
    for a graph     (a run's input and resume, an edit's values, the top level
                    of a run's config and metadata) integers from -2**63 to
                    2**64-1 too
    ttl (seconds)   a whole number from 1 to 10 years (a typo of a few more
                    digits would otherwise overflow the database's time range)
    a count         a whole number within the bounds the argument documents

Thread ids are the one id callers may choose. The alphabet holds what ids are
made of in practice (UUIDs, ULIDs, `tenant:ticket-42`, Slack's `1699.0001`)
and nothing that needs quoting anywhere they travel: no spaces (NOTIFY
payloads are space separated), no NUL (PostgreSQL text cannot hold one), no
`/`, `%` or quotes (URLs, logs, shells). 128 characters leave room for
prefixed ids while keeping every index entry and notification small; a
10,000-character id once got half written on PostgreSQL.

PostgreSQL's text and jsonb cannot hold a NUL, and neither database can store
a lone surrogate (JSON's "\\ud800" escape makes one; it is no UTF-8): such text
is refused on every backend alike instead of failing half way.

A JSON value is checked once, as the JSON scalar parses it, whatever the
argument: `1e400` in a query is a float infinity and Python's json reads `NaN`
from a body, which SQLite would store as text its own JSON functions cannot
read (every metadata filter failed after) and PostgreSQL as null. A value nested
deeper than any state needs would fail later, when encoded, on Python's
recursion limit; 64 levels is as deep as the gateway renders a checkpoint value.

An integer past 64 bits (below -2**63 or above 2**64-1, ormsgpack's signed and
unsigned ranges) is more than LangGraph's msgpack carries: a run given one
(2**70 from a body, or a literal) failed when it was first checkpointed, on
every backend, and so did one whose metadata or config held one at its top
level on the memory saver (LangGraph copies those values, and only those, into
each checkpoint's metadata). What a run or an edit hands a graph is held to 64
bits as its text is checked, in the same walk (`check_graph_value`), and names
where the integer is. Thread metadata and metadata filters still take
any integer: only the gateway's tables keep them (JSON text, jsonb), which
carry every integer, and a filter may ask for what a thread holds.

Anything else is a BadInputError (BAD_USER_INPUT) that names the argument.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from code_hero.errors import BadInputError
from code_hero.persistence.jsonable import MAX_DEPTH, storable_text

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_THREAD_ID_LENGTH",
    "MAX_TTL_SECONDS",
    "THREAD_ID_RULE",
    "check_checkpoint_id",
    "check_count",
    "check_graph_value",
    "check_json",
    "check_metadata",
    "check_run_id",
    "check_text",
    "check_thread_id",
    "check_ttl_seconds",
    "check_webhook_id",
]

MAX_THREAD_ID_LENGTH = 128
THREAD_ID_RULE = f"1-{MAX_THREAD_ID_LENGTH} characters of A-Z a-z 0-9 . _ : -"
_THREAD_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_THREAD_ID_LENGTH}}}")
_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_EXAMPLE = "0b6f3c1e-6a4e-4f0e-9b1a-2d5c7e9f1a3b"
MAX_TTL_SECONDS = 10 * 366 * 24 * 3600
MAX_JSON_DEPTH = MAX_DEPTH


def check_thread_id(value: object, name: str = "threadId") -> str:
    """`value` if it is a valid thread id; BadInputError naming `name` otherwise."""
    if isinstance(value, str) and _THREAD_ID.fullmatch(value):
        return value
    raise BadInputError(f"{name} must be {THREAD_ID_RULE}")


def check_checkpoint_id(value: object, name: str = "checkpointId") -> str:
    """`value` if it is a valid checkpoint id (the thread id rule)."""
    if isinstance(value, str) and _THREAD_ID.fullmatch(value):
        return value
    raise BadInputError(f"{name} must be {THREAD_ID_RULE}")


def check_run_id(value: object, name: str = "runId") -> str:
    """`value` in lower case if it is a UUID; BadInputError naming `name` otherwise."""
    return _check_uuid(value, name, "a run id")


def check_webhook_id(value: object, name: str = "webhookId") -> str:
    """`value` in lower case if it is a UUID (as a webhook's id is); BadInputError otherwise."""
    return _check_uuid(value, name, "a webhook id")


def _check_uuid(value: object, name: str, what: str) -> str:
    if isinstance(value, str) and _RUN_ID.fullmatch(value):
        return value.lower()
    raise BadInputError(f"{name} must be {what}: a UUID such as {_EXAMPLE}")


def check_text(value: object, name: str) -> None:
    """BadInputError naming `name` if a string in `value` (a JSON value) cannot be stored."""
    _check_items(value, name, graph=False)


def check_graph_value(value: object, name: str) -> None:
    """BadInputError naming `name` if `value` (a JSON value a graph is given) holds text
    that cannot be stored (as check_text) or an integer past 64 bits (-2**63 to 2**64-1),
    which LangGraph's msgpack cannot checkpoint."""
    _check_items(value, name, graph=True)


# What LangGraph's msgpack (ormsgpack) carries: a signed or an unsigned 64-bit integer.
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1


def _check_items(value: object, name: str, *, graph: bool) -> None:
    stack: list[Any] = [value]
    while stack:  # not recursive: a JSON value may nest a thousand levels deep
        item = stack.pop()
        # Exact types first, as check_json's walk: an isinstance against Mapping (an ABC)
        # for every value was most of the time (100k ints: 24 ms, now 8).
        kind = type(item)
        if kind is str:
            _check_str(item, name)
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is int:
            if graph and not -1073741823 <= item <= 1073741823:  # one machine digit: fast
                _check_int(value, item, name)
        elif kind is float or kind is bool or item is None:
            continue
        elif isinstance(item, str):
            _check_str(item, name)
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif graph and isinstance(item, int):
            _check_int(value, item, name)


def _check_str(text: str, name: str) -> None:
    if not storable_text(text):
        raise BadInputError(f"{name} may not contain NUL (U+0000) or lone surrogate characters")


def _check_int(value: object, number: int, name: str) -> None:
    """BadInputError if `number` (in `value`) is past 64 bits (-2**63 to 2**64-1)."""
    if _MIN_INT <= number <= _MAX_INT:
        return
    # All its digits up to 39 (Python refuses a str() past 4,300 of them).
    shown = number if number.bit_length() <= 128 else f"a {number.bit_length()}-bit integer"
    raise BadInputError(
        f"{name} holds {shown} at {_path_of(value, number)}: integers must be within "
        "64 bits (-2**63 to 2**64-1), what a checkpoint carries; send a larger one as a string"
    )


def check_json(value: object, name: str = "a JSON value") -> object:
    """`value` if its numbers are finite and it nests at most MAX_JSON_DEPTH levels of
    arrays and objects; BadInputError naming `name` and where in it otherwise."""
    if isinstance(value, float):
        _check_number(value, name, "$")
    # Not recursive: the body parser takes a value a thousand levels deep. Containers
    # only on the stack, and no paths: a third of the time of a walk that keeps them
    # (the path of a refused number is found again, on the way out).
    stack: list[tuple[Any, int]] = [(value, 0)] if isinstance(value, _CONTAINERS) else []
    while stack:
        item, depth = stack.pop()
        if depth == MAX_JSON_DEPTH:
            raise BadInputError(
                f"{name} nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
            )
        # Exact types first: an isinstance against Mapping (an ABC) for every value was
        # most of the walk's time (a 1 MB body of messages: 2-2.7x its parse).
        kind = type(item)
        for v in (
            item.values()
            if kind is dict or (kind is not list and isinstance(item, Mapping))
            else item
        ):
            t = type(v)
            if t is str or t is int or t is bool or v is None:
                continue
            if t is float:
                if not math.isfinite(v):
                    _check_number(v, name, _path_of(value, v))
            elif t is dict or t is list or isinstance(v, _CONTAINERS):
                stack.append((v, depth + 1))
            elif isinstance(v, float):  # a subclass
                _check_number(v, name, _path_of(value, v))
    return value


_CONTAINERS = (Mapping, list, tuple)


def _check_number(number: float, name: str, at: str) -> None:
    if not math.isfinite(number):
        raise BadInputError(
            f"{name} holds {number!r} at {at}: numbers must be finite "
            "(NaN and Infinity are not JSON, and 1e400 overflows to Infinity)"
        )


def _path_of(value: object, number: float) -> str:
    """Where `number` (the object itself) is in `value`, as `$.key[0]`."""
    # (An int past 64 bits is found by identity as well: no two values share one.)
    stack: list[tuple[Any, str]] = [(value, "$")]
    while stack:
        item, at = stack.pop()
        if item is number:
            return at
        if isinstance(item, Mapping):
            stack.extend((v, f"{at}.{k}") for k, v in item.items())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(item))
    return "$"


def check_metadata(value: object, name: str = "metadata") -> dict[str, Any]:
    """`value` as a dict if it is a JSON object of storable text; BadInputError otherwise."""
    if not isinstance(value, Mapping):
        raise BadInputError(f"{name} must be a JSON object")
    check_text(value, name)
    return dict(value)


def check_ttl_seconds(value: object, name: str = "ttlSeconds") -> int:
    """`value` if it is a whole number of seconds from 1 to MAX_TTL_SECONDS."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_TTL_SECONDS:
        return value
    raise BadInputError(f"{name} must be a whole number of seconds from 1 to {MAX_TTL_SECONDS}")


def check_count(value: object, name: str, low: int, high: int) -> int:
    """`value` if it is a whole number from `low` to `high`; BadInputError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    raise BadInputError(f"{name} must be between {low} and {high}, got {value!r}")
