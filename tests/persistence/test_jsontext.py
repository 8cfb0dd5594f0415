"""`jsontext.loads` answers what `json.loads` answers, value or error, for any text."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from code_hero.persistence.jsontext import loads

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.from_regex(r"\A[0-9.]{15,40}\Z"),  # long runs of digits in strings
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text() | st.from_regex(r"\A[0-9]{19,25}\Z"), inner, max_size=4)
    ),
    max_leaves=20,
)


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (1 is not 1.0; NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def answer(text: str | bytes) -> tuple[str, Any]:
    try:
        return "value", json.loads(text)
    except (ValueError, RecursionError) as exc:
        return "error", type(exc)


def answer_of_loads(text: str | bytes) -> tuple[str, Any]:
    try:
        return "value", loads(text)
    except (ValueError, RecursionError) as exc:
        return "error", type(exc)


@settings(max_examples=300, deadline=None, database=None)
@given(values, st.booleans())
def test_any_value_reads_back_as_json_loads_reads_it(value: Any, ensure_ascii: bool) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    for given_text in (text, text.encode("utf-8", "surrogatepass")):
        expected, got = answer(given_text), answer_of_loads(given_text)
        assert expected[0] == got[0] and same(expected[1], got[1]), (given_text, got)


@pytest.mark.parametrize(
    "text",
    [
        '{"n": 18446744073709551616}',  # past 64 bits: orjson would give a float
        '{"n": -9223372036854775809}',
        '{"n": 9223372036854775807, "m": -9223372036854775808}',
        '{"s": "1234567890123456789012"}',  # digits in a string: read by orjson, alike
        '["12345678901234567890123", 12345678901234567890123]',  # the string's, the number's
        '{"12345678901234567890123": 12345678901234567890123}',
        '"12345678901234567890123"',
        "12345678901234567890123",
        "-12345678901234567890123",
        " 12345678901234567890123 ",
        "[\n12345678901234567890123]",
        '{"a":\t12345678901234567890123}',
        '{"a":\r\n -12345678901234567890123}',
        "[1.1234567890123456789012345]",
        "[1.5e1234567890123456789012345]",
        "[1.5E+0000000000000000000001]",
        "[1e-0000000000000000000001]",
        '{"s": "x\\"12345678901234567890123"}',  # after an escaped quote: in the string
        '{"s": "a"12345678901234567890123}',  # malformed: refused by both
        '["a"12345678901234567890123]',
        '{"v": "00000000000000000000000000000026.0.6286970927343425", "n": 1}',
        '{"x": NaN, "y": Infinity, "z": -Infinity}',
        '{"x": 1e400}',
        '{"s": "\\ud800"}',
        '\ufeff{"a": 1}',
        b'\xef\xbb\xbf{"a": 1}',
        '{"a": 1, "a": 2}',
        "[1, 2,]",
        '{"a": "\x01"}',
        b'{"a": "\xff"}',
        "[" * 5000 + "]" * 5000,
        b"[" * 5000 + b"]" * 5000,
        "",
        "  [1.5, -0.0, 0, 1E2]  ",
    ],
)
def test_texts_orjson_reads_otherwise_get_json_loads_answer(text: str | bytes) -> None:
    expected, got = answer(text), answer_of_loads(text)
    assert expected[0] == got[0] and same(expected[1], got[1]), got


# Number texts json.dumps never writes (long mantissas, upper-case exponents, "-0",
# exponents past the float range), and text around them json.loads refuses.
number_texts = st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][+-]?[0-9]{1,4})?\Z")


@settings(max_examples=2000, deadline=None, database=None)
@given(number_texts, st.sampled_from(["[{}]", "{}", ' {"n": {}} ', "[{}x]", "[0{}]"]))
def test_any_number_text_reads_as_json_loads_reads_it(number: str, shape: str) -> None:
    text = shape.replace("{}", number)
    for given_text in (text, text.encode()):
        expected, got = answer(given_text), answer_of_loads(given_text)
        assert expected[0] == got[0] and same(expected[1], got[1]), (given_text, got)


def test_digits_in_strings_are_read_by_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint's channel versions (32 digits, in strings) are no integer past 64
    bits: the text is read by orjson, not handed to json.loads (three times the cost)."""
    text = (
        b'{"v": 4, "channel_versions": {"text": "00000000000000000000000000000026.0.62869"'
        b', "steps": "00000000000000000000000000000027.0.6291863184010584"}, "n": [1, 2.5]}'
    )

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("json.loads called")

    monkeypatch.setattr(json, "loads", refuse)
    assert loads(text) == {
        "v": 4,
        "channel_versions": {
            "text": "00000000000000000000000000000026.0.62869",
            "steps": "00000000000000000000000000000027.0.6291863184010584",
        },
        "n": [1, 2.5],
    }


# Review (rgql): texts json.dumps never writes. Any whitespace JSON allows between
# tokens, strings with escapes (\", \\, \/, \uXXXX) right before runs of digits, and
# integers past 64 bits in every place a value goes.
_ws = st.text(alphabet=" \t\n\r", max_size=2)
_long_ints = st.integers(min_value=10**18, max_value=10**30).map(lambda n: n if n % 2 else -n)
_digit_strings = st.lists(
    st.sampled_from(['\\"', "\\\\", "\\/", "\\u0031", "\\n", "a", " ", "1234567890123456789012"]),
    max_size=4,
).map(lambda parts: '"' + "".join(parts) + '"')


def _texts(depth: int = 2) -> st.SearchStrategy[str]:
    scalars = st.one_of(
        _long_ints.map(str),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        _digit_strings,
        st.sampled_from(["true", "null", "1.5e3", "-0.0", "12345678901234567890.5"]),
    )
    if depth == 0:
        return scalars
    inner = _texts(depth - 1)
    items = st.lists(st.tuples(_ws, inner, _ws), max_size=3)
    arrays = items.map(lambda xs: "[" + ",".join(a + v + b for a, v, b in xs) + "]")
    members = st.lists(st.tuples(_ws, _digit_strings, _ws, _ws, inner, _ws), max_size=3)
    objects = members.map(
        lambda xs: "{" + ",".join(a + k + b + ":" + c + v + d for a, k, b, c, v, d in xs) + "}"
    )
    return st.one_of(scalars, arrays, objects)


@settings(max_examples=1500, deadline=None, database=None)
@given(_ws, _texts(), _ws)
def test_any_spacing_and_escapes_read_as_json_loads_reads_them(
    before: str, body: str, after: str
) -> None:
    text = before + body + after
    for given_text in (text, text.encode()):
        expected, got = answer(given_text), answer_of_loads(given_text)
        assert expected[0] == got[0] and same(expected[1], got[1]), (given_text, got)


_TOKENS = ['"', "\\", "1234567890123456789012", "-", " ", "[", "]", ",", ":", "{", "}", "e", "."]


def test_every_short_text_around_a_long_run_reads_as_json_loads_reads_it() -> None:
    """Every sequence of up to four of these tokens holding a run of 22 digits."""
    import itertools

    for length in range(1, 5):
        for tokens in itertools.product(_TOKENS, repeat=length):
            text = "".join(tokens)
            if _TOKENS[2] not in text:
                continue
            for given_text in (text, text.encode()):
                expected, got = answer(given_text), answer_of_loads(given_text)
                assert expected[0] == got[0] and same(expected[1], got[1]), (given_text, got)


def test_a_text_too_short_for_a_run_is_not_searched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A text shorter than a run of 19 digits (a thread's `{}` metadata, read ten times a
    page) cannot hold one: read without the search, as json.loads reads it."""
    from code_hero.persistence import jsontext

    searched: list[str | bytes] = []
    search = jsontext._number_run

    def counted(text: str | bytes) -> bool:
        searched.append(text)
        return search(text)

    monkeypatch.setattr(jsontext, "_number_run", counted)
    for text in ("{}", b"{}", "[1, 2, 3]", "123456789012345678", '{"a": -1e5}', "nul"):
        assert answer_of_loads(text) == answer(text)
    assert searched == []
    assert loads("1234567890123456789") == 1234567890123456789  # 19: searched, json.loads'
    assert searched == ["1234567890123456789"]
