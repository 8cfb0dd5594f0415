"""Threads: a conversation with its checkpoints and runs."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from code_hero.resolvers import threads as resolve
from code_hero.resolvers.context import Context
from code_hero.schema import fields
from code_hero.schema.checkpoints import Checkpoint, CheckpointConnection
from code_hero.schema.enums import RunStatus, SortDirection, ThreadSortField, ThreadStatus
from code_hero.schema.paging import Counter, PageInfo
from code_hero.schema.scalars import JSON

if TYPE_CHECKING:
    from code_hero.schema.runs import RunConnection

__all__ = [
    "DeleteThreadPayload",
    "Thread",
    "ThreadConnection",
    "ThreadEdge",
    "ThreadFilter",
    "ThreadSort",
]

Info = strawberry.Info[Context, None]


@strawberry.type(description="A conversation: its state lives in checkpoints, its work in runs.")
class Thread:
    id: strawberry.ID
    user_id: str | None
    status: ThreadStatus
    created_at: datetime
    updated_at: datetime
    metadata: JSON
    expires_at: datetime | None = strawberry.field(
        default=None,
        description="When retention deletes the thread (ttl after its last update); null: never.",
    )

    @fields.field("State of the latest root checkpoint, as JSON; null when there is none.")
    async def values(self, info: Info) -> JSON | None:
        return await resolve.thread_values(info, self.id)

    @fields.field("The latest root checkpoint; null when there is none.")
    async def latest_checkpoint(self, info: Info) -> Checkpoint | None:
        return await resolve.latest_checkpoint(info, self.id)

    @fields.field("History of a namespace, newest first.")
    async def checkpoints(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        namespace: str | None = "",
    ) -> CheckpointConnection:
        return await resolve.thread_checkpoints(info, self.id, first, after, namespace)

    @fields.field("The thread's runs, newest first.")
    async def runs(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        status: RunStatus | None = None,
    ) -> Annotated[RunConnection, strawberry.lazy("code_hero.schema.runs")]:
        return await resolve.thread_runs(info, self.id, first, after, status)


@strawberry.type
class ThreadEdge:
    cursor: str
    node: Thread


@strawberry.type(description="A page of threads, most recently updated first.")
class ThreadConnection:
    edges: list[ThreadEdge]
    page_info: PageInfo
    count: strawberry.Private[Counter]

    @fields.field("How many threads match in all (counted only when asked for).")
    async def total_count(self) -> int:
        return await self.count()


@strawberry.input(description="Which threads to list; every given field must match.")
class ThreadFilter:
    user_id: str | None = None
    status: ThreadStatus | None = None
    metadata: JSON | None = strawberry.field(
        default=None,
        description="A JSON object; a thread matches when its metadata contains it.",
    )
    updated_after: datetime | None = None
    updated_before: datetime | None = None


@strawberry.input(description="The order of a listing of threads (default: UPDATED_AT DESC).")
class ThreadSort:
    field: ThreadSortField = ThreadSortField.UPDATED_AT
    direction: SortDirection = SortDirection.DESC


@strawberry.type(description="What deleting a thread removed.")
class DeleteThreadPayload:
    thread_id: strawberry.ID
    deleted: bool = strawberry.field(description="False when no such thread existed.")
    checkpoints_deleted: int
    runs_deleted: int
