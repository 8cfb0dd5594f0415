"""Checkpoints: one saved state of a thread, and the history connection."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import strawberry

from code_hero.persistence.changes import select_channels
from code_hero.persistence.checkpoints import CheckpointView
from code_hero.resolvers import changes as resolve
from code_hero.resolvers.context import Context
from code_hero.schema import fields
from code_hero.schema.enums import CheckpointSource
from code_hero.schema.paging import Counter, LazyCursorEdge, PageInfo
from code_hero.schema.scalars import JSON

__all__ = ["ChannelChange", "Checkpoint", "CheckpointConnection", "CheckpointEdge", "PendingWrite"]

Info = strawberry.Info[Context, None]


@strawberry.type(description="A write a task made that the next step has not applied yet.")
class PendingWrite:
    task_id: str
    channel: str
    value: JSON | None


@strawberry.type(description="One channel that differs from the parent checkpoint.")
class ChannelChange:
    channel: str
    before: JSON | None = strawberry.field(
        description="The parent's value; null when `appended` or the channel is new."
    )
    after: JSON | None = strawberry.field(
        description="The new value; when `appended`, only the items added to the list."
    )
    appended: bool = strawberry.field(
        description="True when a list only grew (e.g. messages): `after` holds just the new items."
    )


@strawberry.type(description="One saved state of a thread (or of a subgraph in it).")
class Checkpoint:
    id: strawberry.ID = strawberry.field(
        description="The checkpoint id, unique within (threadId, namespace)."
    )
    thread_id: strawberry.ID
    namespace: str = strawberry.field(
        description="Empty for the root graph, otherwise the subgraph path."
    )
    parent_id: strawberry.ID | None
    created_at: datetime
    step: int
    source: CheckpointSource
    run_id: strawberry.ID | None
    next: list[str] = strawberry.field(description="Nodes that run next from here.")
    metadata: JSON
    view: strawberry.Private[CheckpointView]
    page: strawberry.Private[Mapping[str, CheckpointView]]  # served alongside: parents to reuse

    @strawberry.field
    def pending_writes(self) -> list[PendingWrite]:
        # Made when selected, not for every checkpoint of every page: building them all
        # was 1.6 % of the CPU of a history page of 20 that did not select them (py-spy).
        # A plain method (only `self`): completed directly, as an attribute would be.
        return [
            PendingWrite(task_id=w.task_id, channel=w.channel, value=JSON(w.value))
            for w in self.view.pending_writes
        ]

    @fields.field("Channel values as JSON (messages in their dict form); `keys`: only these.")
    def values(self, keys: list[str] | None = None) -> JSON:
        return JSON(select_channels(self.view.values, keys))

    @fields.field("The nodes whose writes made this checkpoint ([] for an input checkpoint).")
    async def updated_by(self, info: Info) -> list[str]:
        return await resolve.updated_by(info, self.view, self.page)

    @fields.field(
        "What changed since the parent checkpoint (every channel when there is none to read)."
    )
    async def changes(self, info: Info) -> list[ChannelChange]:
        found = await resolve.channel_changes(info, self.view, self.page)
        return [
            ChannelChange(
                channel=x.channel, before=JSON(x.before), after=JSON(x.after), appended=x.appended
            )
            for x in found
        ]


@strawberry.type
class CheckpointEdge(LazyCursorEdge):
    node: Checkpoint


@strawberry.type(description="A page of a thread's history, newest first.")
class CheckpointConnection:
    edges: list[CheckpointEdge]
    page_info: PageInfo
    count: strawberry.Private[Counter]

    @fields.field("How many checkpoints the namespace has in all (counted only when asked for).")
    async def total_count(self) -> int:
        return await self.count()
