"""`check_graph_value`: text as `check_text` checks it, and no integer past 64 bits.

The gateway's run and edit requests call it on what a graph is given (GraphQL
behaviour: tests/graphql/test_big_numbers.py); here, the kinds of values a Python
caller of the gateway may pass besides parsed JSON: tuples, subclasses.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any

import pytest

from code_hero.errors import BadInputError
from code_hero.inputs import check_graph_value, check_text


class Huge(IntEnum):
    BIG = 2**70


class Text(str):
    pass


@pytest.mark.parametrize(
    ("value", "at"),
    [
        (2**64, "$"),
        ({"a": (1, -(2**63) - 1)}, "$.a[1]"),
        ([{"x": Huge.BIG}], "$[0].x"),
        ({"deep": [[[[10**200]]]]}, "$.deep[0][0][0][0]"),
    ],
)
def test_an_integer_past_64_bits_is_refused_naming_where(value: Any, at: str) -> None:
    with pytest.raises(BadInputError, match="input holds .*" + re.escape(f" at {at}: ")):
        check_graph_value(value, "input")
    check_text(value, "input")  # text alone: any integer


def test_the_64_bit_range_and_other_values_are_taken() -> None:
    check_graph_value(
        {"edges": [2**64 - 1, 2**63, -(2**63), True, None, 1e300], "t": (Text("a"), "b")}, "x"
    )


def test_a_huge_integer_is_named_by_its_size() -> None:
    with pytest.raises(BadInputError, match=r"holds a 3322-bit integer at \$\.n"):
        check_graph_value({"n": 10**1000}, "input")


@pytest.mark.parametrize("value", [Text("a\0b"), {Text("k\0"): 1}, ("x", "\ud800")])
def test_text_no_database_stores_is_refused_in_subclasses_and_tuples_too(value: Any) -> None:
    for check in (check_text, check_graph_value):
        with pytest.raises(BadInputError, match="NUL"):
            check(value, "input")
