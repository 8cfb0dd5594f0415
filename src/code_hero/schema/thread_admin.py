"""Thread editing and retention: the inputs and payloads of createThread, updateThread,
deleteThreads and pruneThreads (copyThread takes an id and answers a Thread)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum

import strawberry

from code_hero.schema.scalars import JSON
from code_hero.schema.threads import ThreadFilter

__all__ = [
    "CreateThreadInput",
    "DeleteThreadsPayload",
    "IfExists",
    "PruneThreadsInput",
    "PruneThreadsPayload",
    "UpdateThreadInput",
]


@strawberry.enum(description="What createThread does when the id is taken.")
class IfExists(Enum):
    RAISE = "RAISE"
    DO_NOTHING = "DO_NOTHING"


@strawberry.input(description="A new thread.")
class CreateThreadInput:
    thread_id: strawberry.ID | None = strawberry.field(
        default=None, description="Null: a new UUID."
    )
    metadata: JSON | None = None
    user_id: str | None = None
    if_exists: IfExists | None = strawberry.field(
        default=IfExists.RAISE,
        description="RAISE: CONFLICT when the id is taken; DO_NOTHING: return the existing thread.",
    )
    ttl_seconds: int | None = strawberry.field(
        default=None,
        description="Delete the thread this long after its last update; null: the server's "
        "default.",
    )


@strawberry.input(description="Changes to a thread.")
class UpdateThreadInput:
    id: strawberry.ID
    metadata: JSON | None = strawberry.field(
        default=None,
        description="Merged into the thread's metadata; a key set to null is removed.",
    )
    ttl_seconds: int | None = None


@strawberry.input(description="What pruneThreads removes.")
class PruneThreadsInput:
    filter: ThreadFilter | None = strawberry.field(
        default=None, description="Which threads; null: all the caller may see."
    )
    older_than: datetime | None = strawberry.field(
        default=None, description="Delete whole threads last updated before this."
    )
    keep_latest: int | None = strawberry.field(
        default=None, description="And/or keep only the latest N checkpoints of each thread."
    )


@strawberry.type(description="What deleteThreads removed.")
class DeleteThreadsPayload:
    deleted: int
    thread_ids: list[strawberry.ID]
    has_more: bool = strawberry.field(description="More threads match than `limit`: call again.")


@strawberry.type(description="What pruneThreads removed.")
class PruneThreadsPayload:
    threads_deleted: int
    checkpoints_deleted: int
