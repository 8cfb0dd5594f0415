"""Typed decorators for resolver fields with a description.

`strawberry.field(description=...)` used as a decorator is typed as returning
`Any`, which strict mypy refuses; these wrap the typed `strawberry.field(fn,
...)` form once, so the schema modules need no `type: ignore`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import strawberry

__all__ = ["field", "mutation", "subscription"]

F = TypeVar("F", bound=Callable[..., Any])


def field(description: str) -> Callable[[F], F]:
    """A query field resolved by the decorated method."""

    def decorate(fn: F) -> F:
        return cast(F, strawberry.field(fn, description=description))

    return decorate


def mutation(description: str) -> Callable[[F], F]:
    """A mutation resolved by the decorated method."""

    def decorate(fn: F) -> F:
        return cast(F, strawberry.mutation(fn, description=description))

    return decorate


def subscription(description: str) -> Callable[[F], F]:
    """A subscription resolved by the decorated method."""

    def decorate(fn: F) -> F:
        return cast(F, strawberry.subscription(fn, description=description))

    return decorate
