"""The registry of threads, runs and run events, on SQLite and on PostgreSQL.

Its interface is `Registry` (`persistence/records.py`). The modules, by concept:

- `dialect.py`: the seam between the shared SQL and a database (sessions, how
  JSON and times travel, containment, "id in list", which error is which), and
  rows as records;
- `sql.py`: `SqlRegistry`, the queries of threads, runs and events, written once;
- `claims.py`: run admission, leases, cancellation and a run's end;
- `cursors.py`: the keyset cursors of the listings;
- `sqlite.py`: `SqliteRegistry`, and metadata containment compiled to SQLite JSON1;
- `postgres.py`: `PostgresRegistry`, on the pool the savers share.
"""

from code_hero.persistence.registry.cursors import run_cursor, thread_cursor
from code_hero.persistence.registry.postgres import PostgresRegistry
from code_hero.persistence.registry.sqlite import SqliteRegistry

__all__ = ["PostgresRegistry", "SqliteRegistry", "run_cursor", "thread_cursor"]
