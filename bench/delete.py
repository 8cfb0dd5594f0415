"""`deleteThread` in-process: the GraphQL app over httpx's ASGI transport, no network.

    python bench/delete.py [--samples 200] [--backend sqlite|postgres|both] [--profile FILE]

Each sample deletes a thread that has one finished run of the 4-node graph (5
checkpoints, its run and events), as `bench/peer.py`'s delete row does. Prints
the median milliseconds, and on PostgreSQL the statements one deletion sends
(counted on psycopg's cursors: BEGIN and COMMIT are not cursor statements).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _common import gql, median, scratch_database

from code_hero.app import create_app
from code_hero.config import create_postgres_checkpointer, create_sqlite_checkpointer
from code_hero.gateway import GatewaySettings
from code_hero.settings import AppSettings

HERE = Path(__file__).resolve().parent
START = "mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }"
DELETE = "mutation($id: ID!) { deleteThread(id: $id) { deleted } }"
SMALL = {"small": f"{HERE / 'chain.py'}:graph"}


class Statements:
    """Counts the statements psycopg's async cursors execute while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.seen: list[str] = []

    def install(self) -> None:
        from psycopg import AsyncCursor

        original = AsyncCursor.execute
        counter = self

        async def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if counter.on:
                counter.seen.append(" ".join(str(query).split())[:90])
            return await original(self, query, *args, **kwargs)

        AsyncCursor.execute = execute  # type: ignore[method-assign]


@asynccontextmanager
async def app_client(settings: GatewaySettings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(AppSettings(gateway=settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield client


async def measure(
    settings: GatewaySettings,
    samples: int,
    counter: Statements | None,
    profile: str | None,
    url: str | None = None,
) -> float:
    """Fill, then delete in a second app: with `url` (PostgreSQL), the deletions' own
    sequential scans are read off pg_stat_user_tables (flushed as the pool closes)."""
    async with app_client(settings) as client:
        ids = []
        for _ in range(samples + 5):
            run = await gql(
                client, START, input={"graph": "small", "input": {"steps": []}, "wait": True}
            )
            ids.append(run["startRun"]["threadId"])
    before = _seq_scans(url) if url else {}
    async with app_client(settings) as client:
        for thread_id in ids[:5]:  # warm-up
            await gql(client, DELETE, id=thread_id)
        if counter is not None:
            counter.on = True
            await gql(client, DELETE, id=ids[5])
            counter.on = False
            ids = ids[6:]
            print(f"  {len(counter.seen)} statements per deletion:")
            for sql in counter.seen:
                print(f"    {sql}")
        else:
            ids = ids[5:]
        prof = cProfile.Profile() if profile else None
        times = []
        for thread_id in ids:
            if prof:
                prof.enable()
            start = time.perf_counter()
            data = await gql(client, DELETE, id=thread_id)
            times.append((time.perf_counter() - start) * 1000)
            if prof:
                prof.disable()
            assert data["deleteThread"]["deleted"]
        if prof and profile:
            prof.dump_stats(profile)
    if url:
        after = _seq_scans(url)
        scanned = {t: n - before.get(t, 0) for t, n in after.items() if n > before.get(t, 0)}
        print(f"  rows read by sequential scans over {len(ids) + 6} deletions: {scanned or 0}")
    return median(times)


def _seq_scans(url: str) -> dict[str, int]:
    """Rows each of our tables gave to sequential scans so far (stats of closed sessions)."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute(
            "SELECT relname, seq_tup_read FROM pg_stat_user_tables WHERE relname LIKE %s",
            ("code_hero%",),
        ).fetchall()
    return {name: int(n) for name, n in rows}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--profile", help="write a cProfile of the timed deletions here")
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = create_sqlite_checkpointer(str(Path(tmp) / "delete.sqlite"))
            ms = await measure(
                GatewaySettings(checkpointer=cfg, graphs=SMALL), args.samples, None, args.profile
            )
            print(f"deleteThread in-process, SQLite: {ms:.2f} ms (median of {args.samples})")
    if args.backend in ("postgres", "both"):
        counter = Statements()
        counter.install()
        async with scratch_database("ch_delete") as url:
            cfg = create_postgres_checkpointer(url)
            ms = await measure(
                GatewaySettings(checkpointer=cfg, graphs=SMALL),
                args.samples,
                counter,
                args.profile,
                url,
            )
            print(f"deleteThread in-process, PostgreSQL: {ms:.2f} ms (median of {args.samples})")


if __name__ == "__main__":
    asyncio.run(main())
