"""`code-hero run --resume ANSWER`: the answer is held to what the GraphQL API takes."""

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
