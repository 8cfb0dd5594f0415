"""JSON text read as `json.loads` reads it, with orjson wherever the two agree."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

__all__ = ["loads"]

# A run of digits that may be an integer past 64 bits: orjson reads those as floats.
_LONG_DIGITS = re.compile(r"[0-9]{19}")
_LONG_DIGIT_BYTES = re.compile(rb"[0-9]{19}")


def loads(text: str | bytes) -> Any:
    """`json.loads(text)`: its value, or its error.

    orjson reads it first, in an eighth of the time, where it reads JSON as
    json.loads does: everywhere but integers past 64 bits (floats to orjson), so
    a text with a run of 19 digits or more goes to json.loads, as does one
    orjson refuses (NaN and Infinity, lone surrogates, a UTF-8 byte order mark,
    nesting past 1,024 levels, malformed JSON), whose value or error is the answer.
    """
    if isinstance(text, str):
        long_digits = _LONG_DIGITS.search(text) is not None
    else:
        long_digits = _LONG_DIGIT_BYTES.search(text) is not None
    if not long_digits:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)
