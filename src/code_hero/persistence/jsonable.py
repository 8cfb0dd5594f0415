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
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any
from uuid import UUID

__all__ = ["to_jsonable"]

MAX_DEPTH = 64


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
