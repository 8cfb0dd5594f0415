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
`0.0000001`). Most text has no number written so, and is given back as it is after a
search or two in C (`keep_floats`).
"""

from __future__ import annotations

import re
from typing import Any, AnyStr, overload

from psycopg.types.json import JsonbDumper

__all__ = ["jsonb_dumps", "keep_floats"]

# Where such a number may be: a digit, `e+`, a digit. Searched from its literal `e+` (a
# regex starting with a class of characters is tried at every position: ten times slower).
_CANDIDATE = r"e\+\d(?<=\de\+\d)"
# The mantissa before it, where a value starts: after `[`, `:`, `,` or a space (json
# writes ", " and ": "), or at the text's start; at most 24 characters (a float's repr
# has 17 digits). Then its exponent.
_MANTISSA = r"(?:^|(?<=[\[:,\s]))-?\d+(?:\.\d+)?\Z"
_WINDOW = 24
_EXPONENT = r"e\+\d+"
_STR = (re.compile(_CANDIDATE), re.compile(_MANTISSA), re.compile(_EXPONENT))
_BYTES = (
    re.compile(_CANDIDATE.encode()),
    re.compile(_MANTISSA.encode()),
    re.compile(_EXPONENT.encode()),
)


@overload
def keep_floats(text: str) -> str: ...
@overload
def keep_floats(text: bytes) -> bytes: ...
@overload
def keep_floats(text: str | bytes) -> str | bytes: ...
def keep_floats(text: str | bytes) -> str | bytes:
    """JSON `text` with each number written with a positive exponent (an integral float)
    written in positional notation ending `.0`, as jsonb keeps a float; else `text`."""
    # A `+` first (memchr: ~4 % of orjson's dumps of 1 MB); then `e+` between digits
    # (~1.2x those dumps, only where a `+` is: text of code, of sums, base64); then only
    # the candidates, a few Python steps each.
    if isinstance(text, str):
        return _kept(text, _STR, '"', "\\", "\\\\", '\\"') if "+" in text else text
    return _kept(text, _BYTES, b'"', b"\\", b"\\\\", b'\\"') if b"+" in text else text


def _kept(
    text: AnyStr,
    patterns: tuple[re.Pattern[AnyStr], re.Pattern[AnyStr], re.Pattern[AnyStr]],
    quote: AnyStr,
    backslash: AnyStr,
    pairs: AnyStr,
    escaped: AnyStr,
) -> AnyStr:
    candidate, mantissa, exponent = patterns
    empty = quote[:0]
    pieces: list[AnyStr] = []
    done = 0  # the text before this is in `pieces`
    read = 0  # the quotes before this are counted in `quotes`
    quotes = 0
    for found in candidate.finditer(text):
        at = found.start()
        number = mantissa.search(text, max(0, at - _WINDOW), at)
        if number is None:  # in a word, a hex id, base64: in a string
            continue
        start = number.start()
        # In a string, or not: the quotes before it that are no escape's. A JSON text's
        # backslashes are escapes, each with the character after it; none is cut here
        # (`start` follows `[`, `:`, `,` or a space, which no escape ends with).
        part = text[read:start]
        if backslash in part:
            part = part.replace(pairs, empty)
            quotes -= part.count(escaped)
        quotes += part.count(quote)
        read = start
        if quotes % 2:
            continue
        end = exponent.match(text, at)
        assert end is not None  # the candidate's own `e+` and digit
        pieces.append(text[done:start])
        pieces.append(_positional(text[start : end.end()]))
        done = end.end()
    if not pieces:
        return text
    pieces.append(text[done:])
    return empty.join(pieces)


def _positional(token: AnyStr) -> AnyStr:
    """A number `1.5e+16` as `15000000000000000.0` (`token` itself if not integral)."""
    written = token if isinstance(token, str) else token.decode("ascii")
    mantissa, exponent = written.split("e+")
    whole, _, fraction = mantissa.partition(".")
    zeros = int(exponent) - len(fraction)
    if zeros < 0:  # not integral (no float's repr is): jsonb keeps its scale as it is
        return token
    positional = f"{whole}{fraction}{'0' * zeros}.0"
    return positional if isinstance(token, str) else positional.encode("ascii")


def jsonb_dumps(value: Any) -> str | bytes:
    """`value` as JSON text for jsonb: what psycopg's jsonb dumper writes (`json.dumps`, or
    what set_json_dumps set for all connections), integral floats kept floats."""
    return keep_floats(JsonbDumper._dumps(value))
