"""What a checkpoint changed: its parent found in its page or loaded, then compared.

A page of history holds the parents of all its checkpoints but the oldest
(on a straight history); those come from the page, and the parents it lacks
are loaded through the operation's checkpoint loader, one gateway call per
page. Nothing is read or compared unless `updatedBy` or `changes` is selected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from code_hero.persistence import changes
from code_hero.persistence.changes import ChannelChangeView
from code_hero.persistence.checkpoints import CheckpointView

if TYPE_CHECKING:
    from strawberry import Info

    from code_hero.resolvers.context import Context

__all__ = ["channel_changes", "updated_by"]

Page = Mapping[str, CheckpointView]
"""The checkpoints served alongside one, by id (its page of history)."""


async def _parent(
    info: Info[Context, Any], view: CheckpointView, page: Page
) -> CheckpointView | None:
    if view.parent_id is None:
        return None
    found = page.get(view.parent_id)
    if found is not None:
        return found
    key = (view.thread_id, view.namespace, view.parent_id)
    return await info.context.loaders.checkpoint.load(key)


async def updated_by(info: Info[Context, Any], view: CheckpointView, page: Page) -> list[str]:
    """The nodes whose writes made the checkpoint."""
    parent = await _parent(info, view, page) if changes.needs_parent(view) else None
    return changes.updated_by(view, parent)


async def channel_changes(
    info: Info[Context, Any], view: CheckpointView, page: Page
) -> list[ChannelChangeView]:
    """The channels that differ from the parent checkpoint (every one without a parent)."""
    parent = await _parent(info, view, page)
    return changes.channel_changes(view.values, None if parent is None else parent.values)
