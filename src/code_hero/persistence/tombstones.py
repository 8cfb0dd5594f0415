"""What an outage's copy-back gives nothing to: threads the primary deleted meanwhile.

Replica B, cut off from the primary, holds copies of a thread; replica A, on
the primary, deletes that thread and the deletion finishes: its row is gone,
and with it the mark (`deletion_token`) a copy would keep. B's copy-back would
then bring the thread back, with whatever runs, events and checkpoints B
copies. Every deletion's last step leaves a tombstone on the primary instead
(`registry/tombstones.py`), and the journal asks `deleted_copies` which of the
threads of a batch of entries are such: their entries are dropped unreplayed
(logged, `log_dropped`). A deletion that finishes after that look still wins:
a thread row's copy checks again in its own transaction (`Registry.put_thread`),
a creating touch makes no row of an id deleted since it was journalled
(`TouchThread`), and the journal looks again after the replay, deleting the
checkpoints that went in of a thread found deleted then (`journal._purge_deleted`).
A thread kept across the switch that another replica deletes is forgotten at
the next run's admission on its id (`recovery.forget_if_deleted`), or at the next
read that would fall back to its copies (`recovery.forget_before_read`).

Which incarnation of an id a copy is of:
- a thread born in the outage (the fallback holds its row, created at c): a
  tombstone of the id of a thread created at or after c drops it. That deleted
  thread was this one (its copy in the primary carries c: `put_thread` writes the
  copy's timestamps) or its successor under the id, a row a run's admission made
  on the primary after the switch (a later created_at, to which a late copy
  would add the outage's runs). A tombstone of a thread created before c is of
  an older incarnation (a client deleted the thread in the outage and made it
  anew under its id; that deletion, replayed, leaves its tombstone after c):
  kept. Two replicas' clocks decide only between threads made under one id on
  both sides of a partition, where either answer is a choice;
- a thread from before the outage (a run in flight went on, or a graph wrote
  checkpoints through the saver): the fallback holds no row of it, and so no
  `created_at` (touches and checkpoints carry none). A tombstone of the id whose
  deletion came after `since` (when this replica lost the primary, or started
  without it: it could not have seen the deletion) drops it: its copies were of
  the deleted thread.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from code_hero.persistence.backends import Backend
    from code_hero.persistence.entries import Entry

__all__ = ["Judge", "deleted_copies", "judge_for", "log_dropped"]

# Which of these threads the primary deleted meanwhile: id -> when (`deleted_copies`).
Judge = Callable[[set[str]], Awaitable[Mapping[str, datetime]]]

log = logging.getLogger(__name__)


async def deleted_copies(
    primary: Backend, fallback: Backend, thread_ids: Collection[str], since: datetime | None
) -> dict[str, datetime]:
    """Those of `thread_ids` whose copies in `fallback` are of a thread the primary has
    deleted (a finished deletion's tombstone): id -> when it was deleted. One query on
    the primary for them all; the fallback's row only of the ids it finds."""
    found = await primary.registry.deleted_threads(sorted(thread_ids))
    gone: dict[str, datetime] = {}
    for thread_id, tombstones in found.items():
        copy = await fallback.registry.get_thread(thread_id, expired=True)
        if copy is not None:
            hits = [deleted for created, deleted in tombstones if created >= copy.created_at]
        elif since is not None:
            hits = [deleted for _, deleted in tombstones if deleted >= since]
        else:
            hits = []
        if hits:
            gone[thread_id] = max(hits)
    return gone


def judge_for(primary: Backend, fallback: Backend, since: datetime | None) -> Judge:
    """`deleted_copies` for the journal's batches, with this replica's outage start."""

    async def judge(thread_ids: set[str]) -> Mapping[str, datetime]:
        return await deleted_copies(primary, fallback, thread_ids, since)

    return judge


def log_dropped(thread_id: str, deleted_at: datetime, entries: Iterable[Entry]) -> None:
    """One warning for a deleted thread's entries dropped unreplayed, saying what they were.
    Only INFO when they are all deletions of it: nothing is lost (a `deleteThread` whose
    statement went in on the primary just as the outage began, then was done again on
    the fallback, is the usual one)."""
    kinds = Counter(type(entry).__name__ for entry in entries)
    lost = set(kinds) - {"DeleteThread"}
    log.log(
        logging.WARNING if lost else logging.INFO,
        "thread %s was deleted on the primary at %s, after this replica's copies of it were "
        "made: its copy-back is dropped (%s)",
        thread_id,
        deleted_at.isoformat(),
        ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())),
    )
