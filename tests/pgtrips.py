"""Round trips to PostgreSQL, counted: for tests of how many a call takes (issue 15)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import psycopg
import pytest
from psycopg.waiting import Ready, Wait


def _reads(waited: Any) -> bool:
    return bool(waited == Wait.R or (isinstance(waited, tuple) and waited[1] == Wait.R))


def _has_read(ready: Any) -> bool:
    return isinstance(ready, int) and bool(ready & Ready.R)


def count_pg_trips(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """A list that gets an item for every round trip on any async connection from now
    on: every wait for a server's answer that reads (a wait that sends nothing and
    reads nothing, as a commit with no transaction open, is none)."""
    trips: list[None] = []
    real = psycopg.AsyncConnection.wait

    def reading(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        read = False
        try:
            waited = next(gen)
            while True:
                ready = yield waited
                # Counted when the socket had the server's answer to read: a wait for
                # reading alone (R), or one in pipeline mode sending and reading at once
                # (RW), which a fast server answers before any wait that only reads.
                if not read and (_reads(waited) or _has_read(ready)):
                    read = True
                    trips.append(None)
                waited = gen.send(ready)
        except StopIteration as stop:
            return stop.value

    async def counted(self: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
        return await real(self, reading(gen), *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "wait", counted)
    return trips


def count_pg_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list that gets every statement sent on any connection from now on, its text
    (BEGIN and COMMIT included, whether a cursor's or the connection's own)."""
    from psycopg import _connection_base, _cursor_base

    sent: list[str] = []
    cursor = _cursor_base.BaseCursor
    send, prepared = cursor._execute_send, cursor._send_query_prepared
    command = _connection_base.BaseConnection._exec_command

    def _text(query: Any) -> str:
        return query.decode() if isinstance(query, bytes) else str(query)

    def counted_send(self: Any, query: Any, **kwargs: Any) -> Any:
        sent.append(_text(query.query))
        return send(self, query, **kwargs)

    def counted_prepared(self: Any, name: Any, query: Any, **kwargs: Any) -> Any:
        sent.append(_text(query.query))
        return prepared(self, name, query, **kwargs)

    def counted_command(self: Any, cmd: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(_text(cmd))
        return command(self, cmd, *args, **kwargs)

    monkeypatch.setattr(cursor, "_execute_send", counted_send)
    monkeypatch.setattr(cursor, "_send_query_prepared", counted_prepared)
    monkeypatch.setattr(_connection_base.BaseConnection, "_exec_command", counted_command)
    return sent
