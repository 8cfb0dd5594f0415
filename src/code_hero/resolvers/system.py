"""Health and the loaded graphs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from code_hero.resolvers import mapping

if TYPE_CHECKING:
    from strawberry import Info

    from code_hero.resolvers.context import Context
    from code_hero.schema import graphs as g
    from code_hero.schema import health as h

__all__ = ["graphs", "health"]


async def health(info: Info[Context, Any]) -> h.Health:
    """The checkpoint backends as the background probe last saw them (as the caller may)."""
    ctx = info.context
    return mapping.health_of(await ctx.gateway.health_for(ctx.caller))


def graphs(info: Info[Context, Any]) -> list[g.Graph]:
    """Every loaded graph, the default first."""
    return [mapping.graph_of(x) for x in info.context.gateway.graphs()]
