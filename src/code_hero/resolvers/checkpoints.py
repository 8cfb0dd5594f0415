"""One checkpoint by id, or a namespace's latest."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from code_hero.resolvers import mapping

if TYPE_CHECKING:
    from strawberry import Info

    from code_hero.resolvers.context import Context
    from code_hero.schema import checkpoints as c

__all__ = ["checkpoint"]


async def checkpoint(
    info: Info[Context, Any], thread_id: str, checkpoint_id: str | None, namespace: str | None
) -> c.Checkpoint | None:
    """The checkpoint with that id, the latest one when id is null, or null."""
    ctx = info.context
    view = await ctx.gateway.get_checkpoint(
        thread_id, checkpoint_id, namespace or "", caller=ctx.caller
    )
    return None if view is None else mapping.checkpoint_of(view)
