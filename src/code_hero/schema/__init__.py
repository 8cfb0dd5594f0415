"""The GraphQL schema of the gateway: Strawberry types only, no I/O.

`schema` is built with the default limits; `build_schema(limits)` builds one
for configured limits (the app does).
"""

from __future__ import annotations

from code_hero.schema.build import GatewaySchema, build_schema

__all__ = ["GatewaySchema", "build_schema", "schema"]

schema = build_schema()
