"""Checkpoints as the gateway shows them: plain data with values rendered as JSON."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from code_hero.errors import BadInputError
from code_hero.persistence.jsonable import storable_text, to_jsonable

if TYPE_CHECKING:  # an annotation only: the schema imports this module, and LangGraph is slow
    from langgraph.checkpoint.base import CheckpointTuple

__all__ = [
    "CheckpointView",
    "PendingWriteView",
    "decode_checkpoint_cursor",
    "encode_checkpoint_cursor",
    "next_nodes",
    "view_of",
]

# Channels LangGraph uses for its own bookkeeping, not part of the user's state.
_INTERNAL_PREFIXES = ("branch:", "__pregel", "__start__", "__interrupt__", "__end__")
_SOURCES = {"input": "INPUT", "loop": "LOOP", "update": "UPDATE", "fork": "FORK"}


@dataclass(frozen=True)
class PendingWriteView:
    task_id: str
    channel: str
    value: Any


@dataclass(frozen=True)
class CheckpointView:
    """One checkpoint: ids, lineage, step, source, JSON values and pending writes;
    `versions_seen` as LangGraph stored it (which node saw which channel version)."""

    checkpoint_id: str
    thread_id: str
    namespace: str
    parent_id: str | None
    created_at: datetime
    step: int
    source: str
    run_id: str | None
    channel_values: Mapping[str, Any]  # as the saver loaded them; `values` renders them
    next: list[str]
    metadata: dict[str, Any]
    pending_writes: list[PendingWriteView]
    versions_seen: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @cached_property
    def values(self) -> dict[str, Any]:
        """The user's channels as JSON, rendered when first asked for: a page whose
        values nobody selected skips rendering them (a third of its time)."""
        return {
            k: to_jsonable(v)
            for k, v in self.channel_values.items()
            if not k.startswith(_INTERNAL_PREFIXES)
        }


def _parse_ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _version_key(version: Any) -> tuple[float, str]:
    if isinstance(version, (int, float)):
        return (float(version), "")
    head = str(version).split(".", 1)[0]
    try:
        return (float(head), str(version))
    except ValueError:
        return (0.0, str(version))


def next_nodes(checkpoint: Mapping[str, Any]) -> list[str]:
    """Nodes triggered from this checkpoint: a trigger channel holding a value newer
    than the node last saw (LangGraph clears a trigger once its node consumed it)."""
    versions: Mapping[str, Any] = checkpoint.get("channel_versions", {})
    values: Mapping[str, Any] = checkpoint.get("channel_values", {})
    seen: Mapping[str, Mapping[str, Any]] = checkpoint.get("versions_seen", {})
    triggers = {"__start__": "__start__"}
    for channel in versions:
        if channel.startswith("branch:to:"):
            triggers[channel.removeprefix("branch:to:")] = channel
    result = []
    for node, channel in triggers.items():
        if channel not in versions or channel not in values:
            continue
        last = seen.get(node, {}).get(channel)
        if last is None or _version_key(versions[channel]) > _version_key(last):
            result.append(node)
    return sorted(result)


def view_of(item: CheckpointTuple) -> CheckpointView:
    """The view of a saver's checkpoint tuple."""
    conf = item.config["configurable"]
    checkpoint = item.checkpoint
    metadata = dict(item.metadata or {})
    parent = (item.parent_config or {}).get("configurable", {}).get("checkpoint_id")
    writes = [
        PendingWriteView(str(task_id), str(channel), to_jsonable(value))
        for task_id, channel, value in (item.pending_writes or [])
    ]
    step = metadata.get("step", -1)
    return CheckpointView(
        checkpoint_id=str(conf["checkpoint_id"]),
        thread_id=str(conf["thread_id"]),
        namespace=str(conf.get("checkpoint_ns", "")),
        parent_id=str(parent) if parent else None,
        created_at=_parse_ts(checkpoint.get("ts")),
        step=int(step) if isinstance(step, int) else -1,
        source=_SOURCES.get(str(metadata.get("source", "")), "LOOP"),
        run_id=str(metadata["run_id"]) if metadata.get("run_id") else None,
        channel_values=checkpoint.get("channel_values", {}),
        next=next_nodes(checkpoint),
        metadata=to_jsonable(metadata),
        pending_writes=writes,
        versions_seen=checkpoint.get("versions_seen") or {},
    )


def encode_checkpoint_cursor(thread_id: str, namespace: str, checkpoint_id: str) -> str:
    """An opaque cursor for history paging."""
    raw = f"{thread_id}\x00{namespace}\x00{checkpoint_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_checkpoint_cursor(cursor: str, thread_id: str, namespace: str) -> str:
    """The checkpoint id in a cursor; BadInputError when it is not one of ours, or of
    another history (a checkpoint id elsewhere would be taken as a time)."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        parts = base64.urlsafe_b64decode(padded).decode().split("\x00", 2)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadInputError(f"invalid checkpoint cursor {cursor!r}") from None
    if len(parts) == 2:  # made before cursors named their thread: taken as then, unchecked
        parts.insert(0, thread_id)
    # A forged id must not reach the database: PostgreSQL's text holds no NUL.
    if len(parts) != 3 or not parts[2] or not storable_text(parts[2]):
        raise BadInputError(f"invalid checkpoint cursor {cursor!r}")
    thread, ns, checkpoint_id = parts
    if thread != thread_id:
        raise BadInputError("the cursor belongs to another thread's history")
    if ns != namespace:
        raise BadInputError("the cursor belongs to another namespace")
    return checkpoint_id
