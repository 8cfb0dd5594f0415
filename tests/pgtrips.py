"""Round trips to PostgreSQL, counted: for tests of how many a call takes (issue 15)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import psycopg
import pytest
from psycopg.waiting import Wait


def _reads(waited: Any) -> bool:
    return bool(waited == Wait.R or (isinstance(waited, tuple) and waited[1] == Wait.R))


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
                if not read and _reads(waited):
                    read = True
                    trips.append(None)
                waited = gen.send((yield waited))
        except StopIteration as stop:
            return stop.value

    async def counted(self: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
        return await real(self, reading(gen), *args, **kwargs)

    monkeypatch.setattr(psycopg.AsyncConnection, "wait", counted)
    return trips
