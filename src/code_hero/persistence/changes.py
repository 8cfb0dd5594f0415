"""What one checkpoint changed: the nodes whose writes made it, and its channels
that differ from its parent's.

Who wrote a checkpoint (LangGraph 1.2, read in `langgraph/pregel/_algo.py`
and `main.py`):

- LangGraph no longer records it in the metadata: `metadata["writes"]`
  (`{node: update}`, added in langgraph PR #427) is dropped before saving
  (`get_serializable_checkpoint_metadata` pops it; langgraphjs PR #1432 removed
  it there too). Older checkpoints may still carry it.
- `updated_channels` names channels, not nodes, and is null for updates.
- The parent's pending writes carry task ids and, in the writes table, a task
  path ("~__pregel_pull, SUPERVISOR", but "~__pregel_push, 0, 0" for a `Send`
  and "~__interrupt__, 0" for an update): not a name for every task, and the
  savers' tuples drop the path.
- `versions_seen[node]` is what `apply_writes` updates for every task that ran
  in the step, `Send` tasks included (they are triggered by `__pregel_tasks`),
  in the root graph and in each subgraph namespace alike; LangGraph's own
  `_infer_as_node` reads it to find "the last node that updated the state". So
  for a step, the nodes that ran are those whose entry differs from the
  parent's. Checked on runs of the offline `code_hero` graph, its team
  subgraphs and a map-reduce graph with `Send`.
- `update_state(as_node=...)` runs the node's writers as a task triggered by
  `__interrupt__`, which is no channel, so `versions_seen` does not move and
  nothing else records `as_node`. The gateway records it in the update's
  metadata under `AS_NODE_KEY` (a config `metadata` key reaches the checkpoint
  metadata through `get_checkpoint_metadata`); an update without it names no
  node, unless it is an old checkpoint with `metadata["writes"]`.

Known gap: with LangGraph's beta `DeltaChannel`, a snapshot bump advances
`versions_seen` of nodes that did not run (`__snapshot_bumps__`); such a node
would be listed too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from code_hero.persistence.checkpoints import CheckpointView

__all__ = [
    "AS_NODE_KEY",
    "GRAPH_ID_KEY",
    "ChannelChangeView",
    "channel_changes",
    "needs_parent",
    "select_channels",
    "updated_by",
]

AS_NODE_KEY = "as_node"
"""The checkpoint metadata key where an update through the gateway names its node."""

GRAPH_ID_KEY = "graph_id"
"""The checkpoint metadata key naming the graph that wrote it (a run's, an update's), as
LangGraph's server names it: a thread with no run left (deleteRun took it, a copy has
none) resumes on that graph."""

_START = "__start__"  # a real task: it writes a run's input into the channels
_MISSING: Any = object()


@dataclass(frozen=True)
class ChannelChangeView:
    """One channel that differs from the parent: before and after, or only the new items."""

    channel: str
    before: Any
    after: Any
    appended: bool


def needs_parent(view: CheckpointView) -> bool:
    """Whether `updated_by` must compare the checkpoint with its parent."""
    return view.source not in ("INPUT", "UPDATE", "FORK")


def updated_by(view: CheckpointView, parent: CheckpointView | None) -> list[str]:
    """The nodes whose writes made the checkpoint ([] for an input or a fork).

    `parent` is the parent checkpoint, None when there is none or it is gone
    (pruned): then a checkpoint that has a parent id names no node.
    """
    if view.source in ("INPUT", "FORK"):
        return []
    if view.source == "UPDATE":
        return _recorded(view.metadata)
    if parent is None and view.parent_id is not None:
        return []
    before = parent.versions_seen if parent is not None else {}
    ran = [
        node
        for node, seen in view.versions_seen.items()
        if seen and seen != before.get(node) and _is_node(node)
    ]
    return sorted(ran) or _recorded(view.metadata)


def _is_node(name: str) -> bool:
    # `__input__`, `__interrupt__` and `__snapshot_bumps__` are LangGraph's bookkeeping.
    return name == _START or not (name.startswith("__") and name.endswith("__"))


def _recorded(metadata: Mapping[str, Any]) -> list[str]:
    node = metadata.get(AS_NODE_KEY)
    if isinstance(node, str) and node:
        return [node]
    writes = metadata.get("writes")  # LangGraph before 1.0
    return sorted(str(k) for k in writes) if isinstance(writes, Mapping) else []


def channel_changes(
    values: Mapping[str, Any], parent: Mapping[str, Any] | None
) -> list[ChannelChangeView]:
    """The channels of `values` that differ from `parent`'s (all of them without a parent).

    Values are compared in their JSON form. A list that only grew (the parent's
    list is its start, item by item) is reported with just the new items and
    `appended`; items are compared whole, not by message id, so a message that
    `add_messages` replaced in place shows as a change of the whole list.
    """
    old = parent or {}
    changes = []
    for channel in sorted(values.keys() | old.keys()):
        after = values.get(channel, _MISSING)
        before = old.get(channel, _MISSING)
        if after is _MISSING:
            changes.append(ChannelChangeView(channel, before, None, False))
        elif before is _MISSING:
            changes.append(ChannelChangeView(channel, None, after, False))
        elif before != after:
            grown = _grown(before, after)
            if grown is None:
                changes.append(ChannelChangeView(channel, before, after, False))
            else:
                changes.append(ChannelChangeView(channel, None, grown, True))
    return changes


def _grown(before: Any, after: Any) -> list[Any] | None:
    """The items `after` adds when it is `before` with items appended; else None."""
    if not isinstance(before, list) or not isinstance(after, list):
        return None
    if len(after) <= len(before) or after[: len(before)] != before:
        return None
    return after[len(before) :]


def select_channels(values: Mapping[str, Any], keys: Iterable[str] | None) -> dict[str, Any]:
    """Only the named channels (a name the state lacks is left out); all without `keys`."""
    if keys is None:
        return dict(values)
    return {k: values[k] for k in dict.fromkeys(keys) if k in values}
