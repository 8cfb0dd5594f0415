"""JSON text for jsonb that keeps every float a float: `1e+23` written `100000000000000000000000.0`.

jsonb stores a number as a numeric, which keeps the scale it was written with and no
exponent: `1e+23` (how json and orjson write the float 1e23, as they write every float
from 1e16 up) becomes `100000000000000000000000`, scale 0, which reads back as the
int 10**23. A run given the float then saw an int on PostgreSQL alone, and past 2**64
LangGraph's msgpack failed the run ("Integer exceeds 64-bit range"). Written in
positional notation with `.0`, the numeric has scale 1 and reads back as the same float
(its digits are the float's shortest repr, which a correctly rounded parse gives back).

Only a positive exponent needs it: a float written with one is integral (repr uses one
from 1e16 up, where every float is), and a negative one leaves a scale (`1e-7` is
`0.0000001`). Most text has no `e+` between digits, and is given back as it is after one
search in C. Where one is, the value is walked, not the text: each such float is swapped
for a mark (a string no client can send: a NUL, which jsonb refuses, then a nonce of this
process) and the value dumped again, each mark's text then replaced by the float's
positional digits. Cost follows the value's objects, never what its strings hold: the
text rewrite this replaced counted quotes in Python for each `e+` in a string, and a
1 MB string of `" 1e+1"` stalled the event loop for about a second.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from psycopg.types.json import JsonbDumper

__all__ = ["dumps_keeping_floats", "jsonb_dumps"]

# A digit, `e+`, a digit: how json and orjson write a float from 1e16 up. Searched from
# its literal `e+` (a regex starting with a class of characters is tried at every
# position: ten times slower).
_CANDIDATE = r"e\+\d(?<=\de\+\d)"
_NONCE = secrets.token_hex(8)
_MARK = f"\x00{_NONCE}"
# A mark as json and orjson write it (both escape a NUL `\u0000`), with its index.
_MARKED = rf'"\\u0000{_NONCE}(\d+)"'
_STR = (re.compile(_CANDIDATE), re.compile(_MARKED))
_BYTES = (re.compile(_CANDIDATE.encode()), re.compile(_MARKED.encode()))
_WRITTEN_WITH_EXPONENT = 1e16  # repr writes a float this big or bigger with one
_INF = float("inf")


def jsonb_dumps(value: Any) -> str | bytes:
    """`value` as JSON text for jsonb: what psycopg's jsonb dumper writes (`json.dumps`, or
    what set_json_dumps set for all connections), integral floats kept floats."""
    return dumps_keeping_floats(value, JsonbDumper._dumps)


def dumps_keeping_floats(value: Any, dumps: Callable[[Any], str | bytes]) -> str | bytes:
    """`dumps(value)`, each float it writes with a positive exponent written positionally
    with `.0` instead, as jsonb keeps a float."""
    text = dumps(value)
    if isinstance(text, str):
        if "+" not in text or _STR[0].search(text) is None:  # memchr first: most text
            return text
    elif b"+" not in text or _BYTES[0].search(text) is None:
        return text
    floats: list[float] = []
    try:
        swapped = _swap(value, floats)
    except RecursionError:  # deeper than dumps went: left as it is
        return text
    if not floats:  # the `e+` was in a string or a key
        return text
    return _put_back(dumps(swapped), floats)


def _swap(value: Any, floats: list[float]) -> Any:
    """`value`, each float written with an exponent swapped for a mark of its index in
    `floats`; the same object where none is inside (a copy is made only of what holds
    one). JSON's types, exact ones first, then their subclasses as copies of the type."""
    kind = type(value)
    if kind is float:
        if _WRITTEN_WITH_EXPONENT <= abs(value) < _INF:
            floats.append(value)
            return f"{_MARK}{len(floats) - 1}"
        return value
    if kind is dict:
        copy: dict[Any, Any] | None = None
        for key, item in value.items():
            if type(item) in _LEAVES:
                continue
            swapped = _swap(item, floats)
            if swapped is not item:
                if copy is None:
                    copy = dict(value)
                copy[key] = swapped
        return value if copy is None else copy
    if kind is list or kind is tuple:
        items: list[Any] | None = None
        for at, item in enumerate(value):
            if type(item) in _LEAVES:
                continue
            swapped = _swap(item, floats)
            if swapped is not item:
                if items is None:
                    items = list(value)
                items[at] = swapped
        return value if items is None else items
    # Subclasses, as the dumpers write them: a float's (numpy.float64, a channel value
    # LangGraph keeps inline), a mapping's (OrderedDict, defaultdict), a list's or a tuple's.
    if isinstance(value, float):
        return _swap(float(value), floats)
    if isinstance(value, Mapping):
        return _swap(dict(value), floats)
    if isinstance(value, list | tuple):
        return _swap(list(value), floats)
    return value


_LEAVES = frozenset({str, int, bool, type(None)})


def _put_back(text: str | bytes, floats: list[float]) -> str | bytes:
    """`text` with each mark's string replaced by its float's positional digits."""
    # Split at the marks (their indexes at the odd places), joined with the digits: no
    # Python call per mark, as a `sub` with a function makes.
    if isinstance(text, str):
        pieces: list[Any] = _STR[1].split(text)
        pieces[1::2] = [_positional(floats[int(at)]) for at in pieces[1::2]]
        return "".join(pieces)
    parts: list[Any] = _BYTES[1].split(text)
    parts[1::2] = [_positional(floats[int(at)]).encode("ascii") for at in parts[1::2]]
    return b"".join(parts)


def _positional(number: float) -> str:
    """A float written with an exponent, `1.5e+16`, as `15000000000000000.0`."""
    digits, _, exponent = repr(number).partition("e+")
    whole, _, fraction = digits.partition(".")
    return whole + fraction + "0" * (int(exponent) - len(fraction)) + ".0"
