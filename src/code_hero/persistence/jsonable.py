"""Render checkpoint values as plain JSON, never raising.

LangChain messages become their dict form, bytes base64, datetimes ISO
strings, tuples (named or not) and sets lists, pydantic models, dataclasses
and slotted objects (langgraph's Send, Interrupt) their fields; anything else
is tagged with its type so a client can still see what was there.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any
from uuid import UUID

import orjson

__all__ = ["REPLACEMENT", "storable", "storable_text", "to_jsonable"]

MAX_DEPTH = 64
# A str holds code points, so a surrogate in one is a lone one (a pair is one code point).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"  # what `storable` puts for a character no database can hold


def to_jsonable(value: Any) -> Any:
    """A JSON-compatible copy of `value` (dicts, lists, str, int, float, bool, None)."""
    return _convert(value, 0)


def _type_name(value: Any) -> str:
    cls = type(value)
    return f"{cls.__module__}.{cls.__qualname__}"


def _convert(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    try:
        return _convert_object(value, depth)
    except Exception as exc:  # a broken __repr__ or model_dump must not break a read
        return {"__type__": _type_name(value), "error": f"unrenderable: {exc!r}"[:200]}


def _convert_object(value: Any, depth: int) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return {"__type__": _type_name(value), "repr": "<max depth>"}
    nxt = depth + 1
    if isinstance(value, Mapping):
        return {str(k): _convert(v, nxt) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_convert(v, nxt) for v in items]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"__type__": "bytes", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (UUID, Decimal, PurePath)):
        return str(value)
    if isinstance(value, Enum):
        return _convert(value.value, nxt)
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):  # pydantic v2, LangChain messages
        return _convert(dump(), nxt)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"__type__": _type_name(value), **_convert(fields, nxt)}
    slots = getattr(type(value), "__slots__", None)  # e.g. langgraph's Send, Interrupt
    if isinstance(slots, (tuple, list)) and slots:
        fields = {name: getattr(value, name, None) for name in slots if not name.startswith("_")}
        return {"__type__": _type_name(value), **_convert(fields, nxt)}
    return {"__type__": _type_name(value), "repr": repr(value)[:2000]}


def storable(value: Any) -> Any:
    """`value` (JSON as `to_jsonable` renders it, or tuples and dataclasses of it: a
    run's timeline) with every NUL (U+0000) and lone surrogate in its strings and keys
    replaced by U+FFFD: PostgreSQL's text and jsonb cannot hold a NUL, and neither
    database can store a lone surrogate. The value itself when it has none (no copy)."""
    try:  # the common case, in C: orjson writes a NUL as \u0000, refuses a lone surrogate
        if b"\\u0000" not in orjson.dumps(value):
            return value
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, or not JSON after all
        pass
    return _storable(value)


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return value if storable_text(value) else _replaced(value)
    if isinstance(value, Mapping):
        items = [
            (_storable(k) if isinstance(k, str) else k, _storable(v)) for k, v in value.items()
        ]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a StepRecord
        changed = {
            f.name: new
            for f in dataclasses.fields(value)
            if (new := _storable(old := getattr(value, f.name))) is not old
        }
        return dataclasses.replace(value, **changed) if changed else value
    if isinstance(value, tuple):  # a run's timeline: a tuple of StepRecords
        walked = tuple(_storable(v) for v in value)
        return value if all(v is v0 for v, v0 in zip(walked, value, strict=True)) else walked
    if isinstance(value, list):
        converted = [_storable(v) for v in value]
        if all(v is v0 for v, v0 in zip(converted, value, strict=True)):
            return value
        return converted
    return value


def storable_text(text: str) -> bool:
    """Whether a database takes `text` as it is: no NUL, no lone surrogate."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _replaced(text: str) -> str:
    return _UNSTORABLE.sub(REPLACEMENT, text)
