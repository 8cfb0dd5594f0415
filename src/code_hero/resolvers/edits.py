"""Human edits: `updateState`, and `Thread.interrupts` through the operation's DataLoader."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import strawberry

from code_hero.persistence.records import ThreadStatus
from code_hero.resolvers import mapping
from code_hero.runs.requests import UpdateState
from code_hero.schema import edits as ed
from code_hero.schema.scalars import JSON

if TYPE_CHECKING:
    from strawberry import Info

    from code_hero.resolvers.context import Context
    from code_hero.schema import checkpoints as c

__all__ = ["thread_interrupts", "update_state"]


async def update_state(info: Info[Context, Any], data: ed.UpdateStateInput) -> c.Checkpoint:
    """Write the edit; the checkpoint it made (the gateway checks the ids)."""
    ctx = info.context
    request = UpdateState(
        thread_id=str(data.thread_id),
        values=data.values,
        as_node=data.as_node,
        checkpoint_id=None if data.checkpoint_id is None else str(data.checkpoint_id),
        namespace=data.namespace or "",
    )
    view = await ctx.gateway.update_state(request, caller=ctx.caller)
    return mapping.checkpoint_of(view)


async def thread_interrupts(
    info: Info[Context, Any], thread_id: str, status: ThreadStatus
) -> list[ed.PendingInterrupt]:
    """What the thread waits for; [] unless it is INTERRUPTED (then batched per operation)."""
    if status is not ThreadStatus.INTERRUPTED:
        return []
    pending = await info.context.loaders.interrupts.load(thread_id)
    return [
        ed.PendingInterrupt(
            id=strawberry.ID(p.interrupt_id),
            node=p.node,
            namespace=p.namespace,
            value=JSON(p.value),
            run_id=None if p.run_id is None else strawberry.ID(p.run_id),
        )
        for p in pending
    ]
