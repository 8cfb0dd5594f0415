"""A thread filter compiled to SQL conditions, for both dialects (never a page filtered in Python).

Every given field becomes one condition and the conditions are AND-ed; `any_of`
becomes one parenthesised OR, `not_` one negation, each compiled by the same
function, so a sub-filter means what it means at the top. The caller AND-s the
result beside anything it adds (the keyset position), and the owner's
`user_id`, set by the gateway on the top filter, is one of those AND-ed
conditions: no sub-filter can widen it.

SQL is three-valued: a condition on a missing metadata key or a NULL user id
is NULL, not false. AND and OR treat NULL as false where a row is kept, but
`NOT NULL` is NULL again, so a negation is written `(...) IS NOT TRUE`: a
thread without an owner is "not Alice's".
"""

from __future__ import annotations

from typing import Any

from code_hero.persistence.records import ThreadFilter, ThreadStatus
from code_hero.persistence.registry.dialect import Dialect, utc

__all__ = ["ALL", "NONE", "thread_where"]

ALL = "1 = 1"  # an empty filter (every row)
NONE = "1 = 0"  # an empty anyOf (no row): the logical value of an empty OR


def thread_where(d: Dialect, flt: ThreadFilter) -> tuple[list[str], list[Any]]:
    """The filter's conditions, to be AND-ed: shared by a listing and its count."""
    clauses: list[str] = []
    params: list[Any] = []

    def add(cond: str, *values: Any) -> None:
        clauses.append(cond)
        params.extend(values)

    if flt.user_id is not None:
        add("user_id = ?", flt.user_id)
    if flt.status is not None:
        add("status = ?", ThreadStatus(flt.status).value)
    for column, op, at in (
        ("updated_at", ">", flt.updated_after),
        ("updated_at", "<", flt.updated_before),
        ("created_at", ">", flt.created_after),
        ("created_at", "<", flt.created_before),
    ):
        if at is not None:
            add(f"{column} {op} ?", d._ts(utc(at)))
    if flt.metadata:
        cond, extra = d._contains("metadata", flt.metadata)
        add(f"({cond})", *extra)
    if flt.ids is not None:
        cond, extra = d._in("thread_id", list(dict.fromkeys(flt.ids)))
        add(cond, *extra)
    if flt.statuses is not None:
        values = list(dict.fromkeys(ThreadStatus(s).value for s in flt.statuses))
        cond, extra = d._in("status", values)
        add(cond, *extra)
    if flt.metadata_has_keys:
        cond, extra = d._has_keys("metadata", flt.metadata_has_keys)
        add(cond, *extra)
    if flt.any_of is not None:
        alternatives: list[str] = []
        for sub in flt.any_of:
            cond, extra = _one(d, sub)
            alternatives.append(cond)
            params.extend(extra)
        clauses.append(f"({' OR '.join(alternatives)})" if alternatives else NONE)
    if flt.not_ is not None:
        cond, extra = _one(d, flt.not_)
        add(f"{cond} IS NOT TRUE", *extra)
    return clauses, params


def _one(d: Dialect, flt: ThreadFilter) -> tuple[str, list[Any]]:
    """A sub-filter as one parenthesised condition."""
    clauses, params = thread_where(d, flt)
    return f"({' AND '.join(clauses) if clauses else ALL})", params
