"""The GraphQL filters of threads and runs as the registry's records.

`anyOf` and `not` nest a `ThreadFilter` in itself; they may nest as deep as the
query depth limit (`Limits.max_depth`, default 10): a selection and a filter
are both bounded by it. The rest of a filter's rules (ids, bounds, text) are
checked by the gateway (`code_hero/filters.py`), for every caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from code_hero.errors import BadInputError
from code_hero.limits import Limits
from code_hero.persistence.records import RunFilter, RunStatus, ThreadFilter, ThreadStatus

if TYPE_CHECKING:
    from code_hero.schema import runs as r
    from code_hero.schema import threads as t

__all__ = ["run_filter", "thread_filter"]


def thread_filter(flt: t.ThreadFilter | None, limits: Limits) -> ThreadFilter | None:
    """The registry's filter for the input; BadInputError when it nests too deep."""
    return None if flt is None else _thread(flt, "filter", 0, limits.max_depth)


def run_filter(flt: r.RunFilter | None) -> RunFilter:
    """The registry's filter for the input (a filter of everything for none)."""
    if flt is None:
        return RunFilter()
    return RunFilter(
        thread_id=flt.thread_id,
        status=flt.status,
        graph=flt.graph,
        user_id=flt.user_id,
        statuses=None if flt.statuses is None else tuple(RunStatus(s) for s in flt.statuses),
        metadata=_object(flt.metadata, "filter.metadata"),
        created_after=flt.created_after,
        created_before=flt.created_before,
    )


def _thread(flt: t.ThreadFilter, name: str, depth: int, max_depth: int) -> ThreadFilter:
    if max_depth and depth > max_depth:
        raise BadInputError(
            f"{name} nests anyOf/not more than {max_depth} levels deep (the query depth limit)"
        )

    def sub(inner: t.ThreadFilter, at: str) -> ThreadFilter:
        return _thread(inner, at, depth + 1, max_depth)

    return ThreadFilter(
        user_id=flt.user_id,
        status=flt.status,
        metadata=_object(flt.metadata, f"{name}.metadata"),
        updated_after=flt.updated_after,
        updated_before=flt.updated_before,
        ids=None if flt.ids is None else tuple(flt.ids),
        statuses=None if flt.statuses is None else tuple(ThreadStatus(s) for s in flt.statuses),
        created_after=flt.created_after,
        created_before=flt.created_before,
        metadata_has_keys=None if flt.metadata_has_keys is None else tuple(flt.metadata_has_keys),
        any_of=None
        if flt.any_of is None
        else tuple(sub(x, f"{name}.anyOf[{i}]") for i, x in enumerate(flt.any_of)),
        not_=None if flt.not_ is None else sub(flt.not_, f"{name}.not"),
    )


def _object(value: Any, name: str) -> Mapping[str, Any] | None:
    if value is not None and not isinstance(value, Mapping):
        raise BadInputError(f"{name} must be a JSON object")
    return value
