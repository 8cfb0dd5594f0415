"""Records of the gateway as schema types: plain functions, no I/O.

The schema modules import the resolver modules (their fields call them), so
the schema is imported here as modules and its names are looked up when a
function runs, never while the modules load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

import strawberry

from code_hero.persistence.checkpoints import CheckpointView, encode_checkpoint_cursor
from code_hero.persistence.records import (
    EventRecord,
    Page,
    RunOrder,
    RunRecord,
    ThreadOrder,
    ThreadRecord,
)
from code_hero.persistence.registry.cursors import run_cursor, thread_cursor
from code_hero.schema import checkpoints as c
from code_hero.schema import enums as e
from code_hero.schema import events as ev
from code_hero.schema import graphs as g
from code_hero.schema import health as h
from code_hero.schema import paging as p
from code_hero.schema import runs as r
from code_hero.schema import threads as t
from code_hero.schema import timeline as tl
from code_hero.schema.scalars import JSON

if TYPE_CHECKING:  # annotations only: the graph registry loads LangGraph
    from code_hero.persistence.manager import ThreadDeletion
    from code_hero.runs.graphs import GraphInfo

__all__ = [
    "checkpoint_connection",
    "checkpoint_of",
    "duration_ms",
    "event_of",
    "graph_of",
    "health_of",
    "run_connection",
    "run_deletion_of",
    "run_of",
    "thread_connection",
    "thread_deletion_of",
    "thread_of",
    "usage_of",
]

_EPOCH = datetime.fromtimestamp(0, UTC)


def thread_of(record: ThreadRecord) -> t.Thread:
    """The schema's Thread."""
    return t.Thread(
        id=strawberry.ID(record.thread_id),
        user_id=record.user_id,
        status=record.status,
        created_at=record.created_at,
        updated_at=record.updated_at,
        metadata=JSON(dict(record.metadata)),
        expires_at=record.expires_at,
        record=record,
    )


def thread_deletion_of(gone: ThreadDeletion) -> t.DeleteThreadPayload:
    """What deleting a thread removed."""
    return t.DeleteThreadPayload(
        thread_id=strawberry.ID(gone.thread_id),
        deleted=gone.deleted,
        checkpoints_deleted=gone.checkpoints_deleted,
        runs_deleted=gone.runs_deleted,
    )


def thread_connection(
    page: Page[ThreadRecord], order: ThreadOrder, count: p.Counter
) -> t.ThreadConnection:
    """A page of threads with keyset cursors of its order; `count` answers totalCount."""
    return t.ThreadConnection(
        edges=[
            t.ThreadEdge(make_cursor=partial(thread_cursor, x, order), node=thread_of(x))
            for x in page.items
        ],
        page_info=p.PageInfo(has_next_page=page.has_next_page, end_cursor=page.end_cursor),
        count=count,
    )


def run_of(record: RunRecord) -> r.Run:
    """The schema's Run."""
    return r.Run(
        id=strawberry.ID(record.run_id),
        thread_id=strawberry.ID(record.thread_id),
        graph=record.graph,
        status=record.status,
        input=JSON(record.input),
        output=JSON(record.output),
        error=record.error,
        metadata=JSON(dict(record.metadata)),
        created_at=record.created_at or _EPOCH,
        started_at=record.started_at,
        finished_at=record.finished_at,
        user_id=record.user_id,
        multitask=e.MultitaskStrategy(record.multitask),
        duration_ms=duration_ms(record.started_at, record.finished_at),
        usage=usage_of(record.input_tokens, record.output_tokens),
        steps=[
            tl.RunStep(
                node=x.node,
                namespace=x.namespace,
                started_at=x.started_at,
                finished_at=x.finished_at,
                duration_ms=duration_ms(x.started_at, x.finished_at),
                error=x.error,
            )
            for x in record.steps
        ],
    )


def duration_ms(start: datetime | None, end: datetime | None) -> float | None:
    """end - start in milliseconds (exact to the microsecond, as the stats compute it)."""
    if start is None or end is None:
        return None
    return ((end - start) // timedelta(microseconds=1)) / 1000


def usage_of(input_tokens: int, output_tokens: int) -> tl.TokenUsage:
    """The schema's TokenUsage."""
    return tl.TokenUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
    )


def run_deletion_of(run_id: str, deleted: bool) -> r.DeleteRunPayload:
    """What deleting a run removed."""
    return r.DeleteRunPayload(run_id=strawberry.ID(run_id), deleted=deleted)


def run_connection(page: Page[RunRecord], order: RunOrder, count: p.Counter) -> r.RunConnection:
    """A page of runs with keyset cursors of its order; `count` answers totalCount."""
    return r.RunConnection(
        edges=[
            r.RunEdge(make_cursor=partial(run_cursor, x, order), node=run_of(x)) for x in page.items
        ],
        page_info=p.PageInfo(has_next_page=page.has_next_page, end_cursor=page.end_cursor),
        count=count,
    )


def checkpoint_of(
    view: CheckpointView, page: Mapping[str, CheckpointView] | None = None
) -> c.Checkpoint:
    """The schema's Checkpoint; `page`: the checkpoints served alongside it, by id."""
    return c.Checkpoint(
        id=strawberry.ID(view.checkpoint_id),
        thread_id=strawberry.ID(view.thread_id),
        namespace=view.namespace,
        parent_id=strawberry.ID(view.parent_id) if view.parent_id else None,
        created_at=view.created_at,
        step=view.step,
        source=e.CheckpointSource(view.source),
        run_id=strawberry.ID(view.run_id) if view.run_id else None,
        next=list(view.next),
        metadata=JSON(view.metadata),
        view=view,
        page={} if page is None else page,
    )


def checkpoint_connection(page: Page[CheckpointView], count: p.Counter) -> c.CheckpointConnection:
    """A page of history with checkpoint cursors; `count` answers totalCount."""
    by_id = {x.checkpoint_id: x for x in page.items}
    return c.CheckpointConnection(
        edges=[
            c.CheckpointEdge(
                make_cursor=partial(
                    encode_checkpoint_cursor, x.thread_id, x.namespace, x.checkpoint_id
                ),
                node=checkpoint_of(x, by_id),
            )
            for x in page.items
        ],
        page_info=p.PageInfo(has_next_page=page.has_next_page, end_cursor=page.end_cursor),
        count=count,
    )


def _status(base: dict[str, Any], d: Mapping[str, Any]) -> ev.RunEvent:
    return ev.RunStatusChanged(
        **base, status=e.RunStatus(str(d.get("status"))), error=d.get("error")
    )


def _transition(base: dict[str, Any], d: Mapping[str, Any]) -> ev.RunEvent:
    return ev.AgentTransition(
        **base, from_agent=d.get("from"), to_agent=str(d.get("to", "")), reason=d.get("reason")
    )


def _node_update(base: dict[str, Any], d: Mapping[str, Any]) -> ev.RunEvent:
    return ev.NodeUpdate(
        **base,
        node=str(d.get("node", "")),
        namespace=str(d.get("namespace", "")),
        update=JSON(d.get("update")),
    )


def _message_delta(base: dict[str, Any], d: Mapping[str, Any]) -> ev.RunEvent:
    return ev.MessageDelta(
        **base,
        node=str(d.get("node", "")),
        message_id=d.get("message_id"),
        delta=str(d.get("delta", "")),
        namespace=str(d.get("namespace", "")),
    )


def _checkpoint(base: dict[str, Any], d: Mapping[str, Any]) -> ev.RunEvent:
    return ev.CheckpointSaved(
        **base,
        checkpoint_id=strawberry.ID(str(d.get("checkpoint_id", ""))),
        namespace=str(d.get("namespace", "")),
        step=int(d.get("step", -1)),
    )


def _interrupt(base: dict[str, Any], d: Mapping[str, Any]) -> ev.RunEvent:
    return ev.Interrupted(
        **base,
        node=str(d.get("node", "")),
        value=JSON(d.get("value")),
        namespace=str(d.get("namespace", "")),
    )


def _tool_call(base: dict[str, Any], d: Mapping[str, Any]) -> ev.RunEvent:
    return ev.ToolCall(
        **base,
        agent=str(d.get("agent", "")),
        tool=str(d.get("tool", "")),
        args=JSON(d.get("args")),
        result=JSON(d.get("result")),
    )


def _custom(base: dict[str, Any], d: Mapping[str, Any]) -> ev.RunEvent:
    return ev.CustomEvent(**base, namespace=str(d.get("namespace", "")), data=JSON(d.get("data")))


_EVENTS: dict[str, Callable[[dict[str, Any], Mapping[str, Any]], ev.RunEvent]] = {
    "status": _status,
    "agent_transition": _transition,
    "node_update": _node_update,
    "message_delta": _message_delta,
    "checkpoint": _checkpoint,
    "interrupt": _interrupt,
    "tool_call": _tool_call,
    "custom": _custom,
}


def event_of(record: EventRecord) -> ev.RunEvent:
    """The schema's event type for a stored event (an unknown type as CustomEvent)."""
    base: dict[str, Any] = {
        "seq": record.seq,
        "run_id": strawberry.ID(record.run_id),
        "thread_id": strawberry.ID(record.thread_id),
        "at": record.at,
    }
    build = _EVENTS.get(record.type)
    if build is None:
        return ev.CustomEvent(
            **base, namespace="", data=JSON({"type": record.type, **record.payload})
        )
    return build(base, record.payload)


def health_of(report: Mapping[str, Any]) -> h.Health:
    """The manager's health report as the schema's Health."""
    return h.Health(
        status=e.HealthStatus(str(report["overall_status"]).upper()),
        backends=[
            h.BackendHealth(
                role=str(b["role"]),
                kind=e.BackendKind(str(b["kind"]).upper()),
                healthy=bool(b["healthy"]),
                active=bool(b["active"]),
                latency_ms=b.get("latency_ms"),
                last_error=b.get("last_error"),
                checked_at=b.get("checked_at"),
            )
            for b in report.get("backends", [])
        ],
        pending_sync=int(report.get("pending_sync", 0)),
        uptime_seconds=float(report.get("uptime_seconds", 0.0)),
        version=str(report.get("version", "")),
        degraded_since=report.get("degraded_since"),
        quarantined=int(report.get("quarantined", 0)),
        adoptions=[
            h.AdoptedFallbackFile(
                file=a.get("file"),
                since=a["since"],
                pending_sync=int(a.get("pending_sync", 0)),
                quarantined=int(a.get("quarantined", 0)),
                last_error=a.get("last_error"),
            )
            for a in report.get("adoptions", [])
        ],
        last_adoption=_adoption_of(report.get("last_adoption")),
    )


def _adoption_of(last: Mapping[str, Any] | None) -> h.FallbackAdoption | None:
    if last is None:
        return None
    return h.FallbackAdoption(
        file=last.get("file"),
        at=last["at"],
        writes=int(last.get("writes", 0)),
        threads=int(last.get("threads", 0)),
        error=last.get("error"),
    )


def graph_of(info: GraphInfo) -> g.Graph:
    """A loaded graph and its agents."""
    return g.Graph(
        name=info.name,
        default=info.default,
        agents=[g.Agent(name=a.name, team=a.team, description=a.description) for a in info.agents],
    )
