"""The GraphQL schema of the gateway: Strawberry types only, no I/O.

`schema` is built with the default limits, on first use; `build_schema(limits)`
builds one for configured limits (the app does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from code_hero.schema.build import GatewaySchema, build_schema

if TYPE_CHECKING:
    import strawberry

    schema: strawberry.Schema

__all__ = ["GatewaySchema", "build_schema", "schema"]


def __getattr__(name: str) -> object:
    # Built when first asked for, not at import: a server builds its own schema for
    # its limits and never reads this one (a second schema: 0.5 MiB resident).
    if name == "schema":
        built = globals()["schema"] = build_schema()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
