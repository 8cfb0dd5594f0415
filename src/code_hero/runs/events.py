"""Run events: their types and how LangGraph's stream parts become them.

Every event is stored as an `EventRecord` (run, thread, seq, type, payload,
time). The payload of each type:

    status            {"status": RunStatus, "error": str | None}
    agent_transition  {"from": str | None, "to": str, "reason": str | None}
    node_update       {"node": str, "namespace": str, "update": JSON}
    message_delta     {"node": str, "namespace": str, "message_id": str | None, "delta": str}
    checkpoint        {"checkpoint_id": str, "namespace": str, "step": int}
    interrupt         {"node": str, "namespace": str, "value": JSON}
    tool_call         {"agent": str, "tool": str, "args": JSON, "result": JSON}
    custom            {"namespace": str, "data": JSON}

A checkpoint's event is made from its save (`checkpoint_saved`), where the stream
reaches it: LangGraph streams a checkpoint while its save may still be in flight, and
a cancel of the run may drop that save.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langgraph.types import StreamMode

from code_hero.errors import BadInputError
from code_hero.persistence.jsonable import to_jsonable
from code_hero.persistence.records import EventRecord, RunStatus

__all__ = [
    "EventType",
    "checkpoint_saved",
    "event_types",
    "namespace_of",
    "terminal_status",
    "translate",
]

# "tasks": each node execution's start and result, for the run's timeline (runs/timeline.py).
# "checkpoints": where in the stream a checkpoint is announced; announced only once its
# save returned too (`checkpoint_saved`).
STREAM_MODES: list[StreamMode] = [
    "updates",
    "messages",
    "custom",
    "values",
    "tasks",
    "checkpoints",
]


class EventType(StrEnum):
    STATUS = "status"
    AGENT_TRANSITION = "agent_transition"
    NODE_UPDATE = "node_update"
    MESSAGE_DELTA = "message_delta"
    CHECKPOINT = "checkpoint"
    INTERRUPT = "interrupt"
    TOOL_CALL = "tool_call"
    CUSTOM = "custom"


Draft = tuple[EventType, dict[str, Any]]


def event_types(values: Iterable[str] | None) -> frozenset[EventType] | None:
    """The event types a subscriber asked for (None: all); BadInputError for an empty list.

    An empty list is refused rather than read as "nothing but the end": a client
    that wants only the end lists RUN_STATUS_CHANGED, and an empty filter is more
    often a bug (every toggle of a view off) than a wish.
    """
    if values is None:
        return None
    try:
        wanted = frozenset(EventType(v) for v in values)
    except ValueError as exc:
        raise BadInputError(f"types: {exc}") from None
    if not wanted:
        raise BadInputError("types must name at least one event type; leave it out for all")
    return wanted


def namespace_of(ns: Sequence[str]) -> str:
    """LangGraph's checkpoint namespace string for a stream namespace tuple."""
    return "|".join(ns)


def terminal_status(event: EventRecord) -> RunStatus | None:
    """The final status an event announces, or None when the run goes on."""
    if event.type != EventType.STATUS:
        return None
    status = RunStatus(str(event.payload.get("status")))
    return status if status.finished else None


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


def checkpoint_saved(config: Mapping[str, Any], metadata: Mapping[str, Any]) -> Draft:
    """The event of a checkpoint stored: the config its save returned, its metadata."""
    conf = config.get("configurable") or {}
    step = metadata.get("step", -1)
    return (
        EventType.CHECKPOINT,
        {
            "checkpoint_id": str(conf.get("checkpoint_id", "")),
            "namespace": str(conf.get("checkpoint_ns", "")),
            "step": step if isinstance(step, int) else -1,
        },
    )


def translate(ns: Sequence[str], mode: str, data: Any) -> list[Draft]:
    """The events one `astream(..., subgraphs=True)` part stands for."""
    namespace = namespace_of(ns)
    if mode == "updates" and isinstance(data, Mapping):
        return [
            (
                EventType.NODE_UPDATE,
                {"node": str(node), "namespace": namespace, "update": to_jsonable(update)},
            )
            for node, update in data.items()
            # Not nodes: the interrupt (told as an Interrupted event), and the mark of
            # updates replayed from a checkpoint's stored writes (a run resumed after a
            # crash): {"__metadata__": {"cached": true}}.
            if node not in ("__interrupt__", "__metadata__")
        ]
    if mode == "messages" and isinstance(data, tuple) and len(data) == 2:
        message, meta = data
        if not isinstance(message, (AIMessage, AIMessageChunk)):
            return []
        delta = _text(message)
        if not delta:
            return []
        node = str((meta or {}).get("langgraph_node", ""))
        return [
            (
                EventType.MESSAGE_DELTA,
                {"node": node, "namespace": namespace, "message_id": message.id, "delta": delta},
            )
        ]
    if mode == "custom":
        if isinstance(data, Mapping) and data.get("type") == "agent_transition":
            return [
                (
                    EventType.AGENT_TRANSITION,
                    {
                        "from": to_jsonable(data.get("from")),
                        "to": str(data.get("to")),
                        "reason": to_jsonable(data.get("reason")),
                    },
                )
            ]
        if isinstance(data, Mapping) and data.get("type") == "tool_call":
            return [
                (
                    EventType.TOOL_CALL,
                    {
                        "agent": str(data.get("agent", "")),
                        "tool": str(data.get("tool", "")),
                        "args": to_jsonable(data.get("args")),
                        "result": to_jsonable(data.get("result")),
                    },
                )
            ]
        return [(EventType.CUSTOM, {"namespace": namespace, "data": to_jsonable(data)})]
    return []
