"""The registry of threads, runs and run events, on SQLite and on PostgreSQL.

Its interface is `Registry` (`persistence/records.py`). The modules, by concept:

- `dialect.py`: the seam between the shared SQL and a database (sessions, how
  JSON and times travel, containment, "id in list", which error is which), and
  rows as records;
- `sql.py`: `SqlRegistry`, the queries of threads, runs and events, written once;
- `filters.py`: a thread filter (its `anyOf` and `not` too) compiled to SQL conditions;
- `claims.py`: run admission, leases, cancellation and a run's end;
- `cursors.py`: the keyset cursors of the listings;
- `sqlite.py`: `SqliteRegistry`, and metadata containment compiled to SQLite JSON1;
- `postgres.py`: `PostgresRegistry`, on the pool the savers share.
"""

from __future__ import annotations

import importlib
from typing import Any

# Loaded on first use (PEP 562): importing a light submodule, such as the records,
# must not load every driver and LangGraph through this package.
_HOMES = {
    "run_cursor": "code_hero.persistence.registry.cursors",
    "thread_cursor": "code_hero.persistence.registry.cursors",
    "PostgresRegistry": "code_hero.persistence.registry.postgres",
    "SqliteRegistry": "code_hero.persistence.registry.sqlite",
}

__all__ = ["PostgresRegistry", "SqliteRegistry", "run_cursor", "thread_cursor"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
