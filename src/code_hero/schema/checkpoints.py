"""Checkpoints: one saved state of a thread, and the history connection."""

from __future__ import annotations

from datetime import datetime

import strawberry

from code_hero.schema import fields
from code_hero.schema.enums import CheckpointSource
from code_hero.schema.paging import Counter, PageInfo
from code_hero.schema.scalars import JSON

__all__ = ["Checkpoint", "CheckpointConnection", "CheckpointEdge", "PendingWrite"]


@strawberry.type(description="A write a task made that the next step has not applied yet.")
class PendingWrite:
    task_id: str
    channel: str
    value: JSON | None


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
    values: JSON = strawberry.field(
        description="Channel values as JSON (messages in their dict form)."
    )
    next: list[str] = strawberry.field(description="Nodes that run next from here.")
    metadata: JSON
    pending_writes: list[PendingWrite]


@strawberry.type
class CheckpointEdge:
    cursor: str
    node: Checkpoint


@strawberry.type(description="A page of a thread's history, newest first.")
class CheckpointConnection:
    edges: list[CheckpointEdge]
    page_info: PageInfo
    count: strawberry.Private[Counter]

    @fields.field("How many checkpoints the namespace has in all (counted only when asked for).")
    async def total_count(self) -> int:
        return await self.count()
