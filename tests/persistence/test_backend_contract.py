"""What every backend must supply: a backend lacking part of the contract cannot be built."""

from __future__ import annotations

import pytest

from code_hero.config import CheckpointerConfig
from code_hero.persistence.backends import Backend

REQUIRED = (
    "open",
    "probe",
    "count_checkpoints",
    "checkpoint_keys",
    "checkpoint_thread_ids",
    "checkpoint_namespaces",
    "keep_latest",
    "delete_orphan_checkpoints",
)


async def _stub(self: Backend, *args: object, **kwargs: object) -> None:
    """A stand-in for any required method."""


@pytest.mark.parametrize("missing", REQUIRED)
def test_a_backend_lacking_a_required_method_cannot_be_built(missing: str) -> None:
    methods = {name: _stub for name in REQUIRED if name != missing}
    partial = type("PartialBackend", (Backend,), methods)
    with pytest.raises(TypeError, match=missing):
        partial(CheckpointerConfig())


def test_the_required_methods_are_the_abstract_ones() -> None:
    assert Backend.__abstractmethods__ == frozenset(REQUIRED)
