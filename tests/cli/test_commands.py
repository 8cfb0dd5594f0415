"""`code-hero run --resume ANSWER`: the answer is held to what the GraphQL API takes
(finite numbers, integers within 64 bits, bounded nesting)."""

from __future__ import annotations

import pytest

from code_hero.cli.commands import _answer
from code_hero.errors import BadInputError


def test_an_answer_is_json_when_it_parses_else_text() -> None:
    assert _answer('{"approved": false}') == {"approved": False}
    assert _answer("yes please") == "yes please"


@pytest.mark.parametrize("text", ["NaN", '{"x": [1, Infinity]}', "1e400"])
def test_a_non_finite_number_is_refused(text: str) -> None:
    # json.loads takes NaN and Infinity; the GraphQL JSON scalar refuses them (review).
    with pytest.raises(BadInputError, match="finite"):
        _answer(text)


@pytest.mark.parametrize("levels", [65, 900, 100_000])
def test_an_answer_nested_too_deep_is_refused(levels: int) -> None:
    with pytest.raises(BadInputError, match="levels deep"):
        _answer("[" * levels + "]" * levels)


@pytest.mark.parametrize("text", ["1180591620717411303424", '{"x": [1, -9223372036854775809]}'])
def test_an_integer_past_64_bits_is_refused(text: str) -> None:
    # LangGraph's msgpack cannot carry it: the resumed run failed at its first checkpoint.
    with pytest.raises(BadInputError, match="within 64 bits"):
        _answer(text)


def test_the_64_bit_range_and_big_floats_are_taken() -> None:
    assert _answer("[18446744073709551615, -9223372036854775808]") == [2**64 - 1, -(2**63)]
    answer = _answer('{"x": 1e23}')
    assert answer == {"x": 1e23} and isinstance(answer["x"], float)  # type: ignore[index]
