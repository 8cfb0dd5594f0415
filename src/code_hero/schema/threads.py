"""Threads: a conversation with its checkpoints and runs."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import strawberry

from code_hero.persistence.records import ThreadRecord
from code_hero.resolvers import edits as resolve_edits
from code_hero.resolvers import threads as resolve
from code_hero.resolvers.context import Context
from code_hero.schema import fields
from code_hero.schema.checkpoints import Checkpoint, CheckpointConnection
from code_hero.schema.edits import PendingInterrupt
from code_hero.schema.enums import RunStatus, SortDirection, ThreadSortField, ThreadStatus
from code_hero.schema.paging import Counter, LazyCursorEdge, PageInfo
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
    # The registry's record, as read for this operation's caller (None: not kept).
    record: strawberry.Private[ThreadRecord | None] = None
    # Its `checkpoints` page, when read with the record (see resolvers.threads.thread).
    history: strawberry.Private[resolve.History | None] = None

    @fields.field(
        "State of the latest root checkpoint, as JSON; null when there is none."
        " `keys`: only these channels (a name the state lacks is left out)."
    )
    async def values(self, info: Info, keys: list[str] | None = None) -> JSON | None:
        return await resolve.thread_values(info, self.id, keys)

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
        return await resolve.thread_checkpoints(
            info, self.id, first, after, namespace, self.record, self.history
        )

    @fields.field("The thread's runs, newest first.")
    async def runs(
        self,
        info: Info,
        first: int | None = 20,
        after: str | None = None,
        status: RunStatus | None = None,
    ) -> Annotated[RunConnection, strawberry.lazy("code_hero.schema.runs")]:
        return await resolve.thread_runs(info, self.id, first, after, status)

    @fields.field("What the thread waits for while INTERRUPTED (an inbox); [] otherwise.")
    async def interrupts(self, info: Info) -> list[PendingInterrupt]:
        return await resolve_edits.thread_interrupts(info, self.id, self.status)


@strawberry.type
class ThreadEdge(LazyCursorEdge):
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
    ids: list[strawberry.ID] | None = strawberry.field(
        default=None, description="One of these threads (at most 1,000)."
    )
    statuses: list[ThreadStatus] | None = strawberry.field(
        default=None, description="One of these statuses."
    )
    created_after: datetime | None = None
    created_before: datetime | None = None
    metadata_has_keys: list[str] | None = strawberry.field(
        default=None, description="Metadata has every one of these top-level keys."
    )
    any_of: list[ThreadFilter] | None = strawberry.field(
        default=None,
        description="At least one of these filters matches (OR); an empty list matches nothing.",
    )
    not_: ThreadFilter | None = strawberry.field(
        default=None, name="not", description="This filter does not match."
    )


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
