"""Copy everything from one backend to another: threads, checkpoints, writes, runs, events.

Re-running is idempotent: checkpoints and writes are upserts in every stock
saver, registry rows are upserts, and events are appended only past the
target's last sequence number.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, CheckpointTuple

from code_hero.config import CheckpointerConfig, config_from_url
from code_hero.persistence.backends import Backend, open_backend
from code_hero.persistence.fallback import full_versions
from code_hero.persistence.records import RunFilter

__all__ = ["MigrationReport", "copy_thread_checkpoints", "migrate", "migrate_backends"]

Progress = Callable[[int, int, str], None]

PAGE = 50  # checkpoints read (and held) at a time while copying a thread's history


@dataclass(frozen=True)
class MigrationReport:
    """How much was copied."""

    threads: int
    checkpoints: int
    writes: int
    runs: int
    events: int  # appended (past the target's last seq of each run)
    events_there: int = 0  # the copied runs' events the target had already


def _config(value: CheckpointerConfig | str) -> CheckpointerConfig:
    return value if isinstance(value, CheckpointerConfig) else config_from_url(value)


async def migrate(
    source: CheckpointerConfig | str,
    target: CheckpointerConfig | str,
    *,
    progress: Progress | None = None,
) -> MigrationReport:
    """Copy every thread, checkpoint, write, run and event from source to target."""
    async with open_backend(_config(source)) as src, open_backend(_config(target)) as dst:
        return await migrate_backends(src, dst, progress=progress)


async def migrate_backends(
    src: Backend, dst: Backend, *, progress: Progress | None = None
) -> MigrationReport:
    """Copy between two opened backends (see `migrate`)."""
    thread_ids = sorted(
        set(await src.registry.thread_ids()) | set(await src.checkpoint_thread_ids())
    )
    counts: defaultdict[str, int] = defaultdict(int)
    for index, thread_id in enumerate(thread_ids, start=1):
        record = await src.registry.get_thread(thread_id)
        if record is not None and not await dst.registry.put_thread(record):
            # Copied by an earlier run and deleted in the target since (its tombstone):
            # the deletion wins there, as at an outage's copy-back.
            continue
        namespaces = await src.checkpoint_namespaces(thread_id)
        checkpoints, writes = await _copy_history(src.saver, dst.saver, thread_id, namespaces)
        counts["checkpoints"] += checkpoints
        counts["writes"] += writes
        after: str | None = None
        while True:
            page = await src.registry.list_runs(
                RunFilter(thread_id=thread_id), first=100, after=after
            )
            for run in page.items:
                await dst.registry.put_run(run)
                counts["runs"] += 1
                there, added = await _copy_events(src, dst, run.run_id)
                counts["events"] += added
                counts["events_there"] += there
            if not page.has_next_page:
                break
            after = page.end_cursor
        counts["threads"] += 1
        if progress is not None:
            progress(index, len(thread_ids), thread_id)
    return MigrationReport(
        counts["threads"],
        counts["checkpoints"],
        counts["writes"],
        counts["runs"],
        counts["events"],
        counts["events_there"],
    )


async def copy_thread_checkpoints(
    saver: BaseCheckpointSaver[Any],
    source_id: str,
    target_id: str,
    namespaces: Iterable[str],
    *,
    page: int = PAGE,
) -> int:
    """Copy every checkpoint of a thread in `namespaces` (pending writes included) to
    another thread id on the same saver, `page` at a time; returns how many checkpoints."""
    checkpoints, _ = await _copy_history(
        saver, saver, source_id, namespaces, page=page, target_id=target_id
    )
    return checkpoints


async def _copy_history(
    src: BaseCheckpointSaver[Any],
    dst: BaseCheckpointSaver[Any],
    thread_id: str,
    namespaces: Iterable[str],
    *,
    page: int = PAGE,
    target_id: str | None = None,
) -> tuple[int, int]:
    """Copy a thread's checkpoints and writes (to `target_id`, or the same id), each
    namespace newest first, holding `page` checkpoints at most; how many of each."""
    checkpoints = writes = 0
    for namespace in namespaces:
        # One namespace per listing: the memory saver's `limit` counts across the
        # namespaces it walks one after another, so a `before` cursor spanning them
        # would skip the newer checkpoints of the next one.
        config: RunnableConfig = {
            "configurable": {"thread_id": thread_id, "checkpoint_ns": namespace}
        }
        before: RunnableConfig | None = None
        while True:
            # Materialised first: a SQL saver holds its lock while alist() yields.
            items = [t async for t in src.alist(config, before=before, limit=page)]
            for item in items:
                writes += await _copy_checkpoint(item, dst, thread_id=target_id)
            checkpoints += len(items)
            if len(items) < page:
                break
            before = items[-1].config
            del items  # the next page replaces this one rather than joining it
    return checkpoints, writes


async def _copy_checkpoint(
    item: CheckpointTuple, saver: BaseCheckpointSaver[Any], *, thread_id: str | None = None
) -> int:
    conf = item.config["configurable"]
    parent: dict[str, Any] = {
        "thread_id": thread_id or conf["thread_id"],
        "checkpoint_ns": conf.get("checkpoint_ns", ""),
    }
    if item.parent_config:
        parent["checkpoint_id"] = item.parent_config["configurable"]["checkpoint_id"]
    metadata = item.metadata
    if thread_id is not None and metadata.get("thread_id") == conf["thread_id"]:
        metadata = {**metadata, "thread_id": thread_id}  # type: ignore[typeddict-item]
    saved = await saver.aput(
        {"configurable": parent}, item.checkpoint, metadata, full_versions(item.checkpoint)
    )
    by_task: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    for task_id, channel, value in item.pending_writes or []:
        by_task[task_id].append((channel, value))
    for task_id, writes in by_task.items():
        await saver.aput_writes(saved, writes, task_id)
    return sum(len(w) for w in by_task.values())


async def _copy_events(src: Backend, dst: Backend, run_id: str) -> tuple[int, int]:
    """Append the run's events past the target's last seq: (how many the target had,
    how many were appended). Counting only the appended ones, a second migration said
    "0 events" beside the full counts of what it upserted."""
    copied = 0
    there = last = await dst.registry.last_seq(run_id)
    while True:
        events = await src.registry.list_events(run_id, after_seq=last, limit=500)
        if not events:
            return there, copied
        await dst.registry.store_events(events)
        copied += len(events)
        last = events[-1].seq
