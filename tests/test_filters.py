"""What a filter may hold, checked before any I/O (`code_hero.filters`), from Python."""

from __future__ import annotations

import pytest

from code_hero.errors import BadInputError
from code_hero.filters import check_run_filter, check_thread_filter
from code_hero.persistence.records import RunFilter, ThreadFilter


@pytest.mark.parametrize("number", [float("nan"), float("inf"), -float("inf")])
def test_a_metadata_filter_number_that_is_not_finite_is_bad_input(number: float) -> None:
    # GraphQL's JSON scalar refuses them; from Python, NaN reached the databases, written
    # as null: PostgreSQL matched null elements, SQLite nothing.
    with pytest.raises(BadInputError, match=r"filter\.anyOf\[0\]\.metadata.*not finite"):
        check_thread_filter(ThreadFilter(any_of=(ThreadFilter(metadata={"x": [1, number]}),)))
    with pytest.raises(BadInputError, match=r"filter\.metadata.*not finite"):
        check_run_filter(RunFilter(metadata={"x": {"y": number}}))
    assert check_run_filter(RunFilter(metadata={"x": 1.5})).metadata == {"x": 1.5}
