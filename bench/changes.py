"""What `changes` costs on a page of history, side by side in one run.

    python bench/changes.py [--samples 40] [--runs 26]

A thread of the built-in graph with more than 100 root checkpoints (`--runs`
runs of 4 each; its message list grows with every run), served by a
`code-hero serve` process on PostgreSQL and on SQLite. A page of 20
checkpoints through GraphQL over HTTP, with `updatedBy` and `changes`
against the same page without them (alternating samples, the first page and
a page deeper in, whose oldest checkpoint's parent is on the next page).
Target: `changes_page_ratio`, the slower backend's median ratio, < 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Replica, gql, median, scratch_database, target

__all__ = ["changes_page", "changes_targets"]

NODE = "id parentId step source createdAt"
PAGE = """query($t: ID!, $after: String) { thread(id: $t) { checkpoints(first: 20, after: $after) {
  edges { node { %s } } pageInfo { hasNextPage endCursor } } } }"""
PLAIN = PAGE % NODE
CHANGES = PAGE % f"{NODE} updatedBy changes {{ channel before after appended }}"
VALUES = PAGE % f"{NODE} values"  # what a history view downloads without `changes`
START = "mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }"
MESSAGES = ("Help me build a FastAPI app", "Now a Next.js page for it", "And document the API")


async def long_thread(client: httpx.AsyncClient, runs: int) -> tuple[str, str]:
    """A thread of `runs` runs of the built-in graph; its id and a cursor two pages in."""
    thread = None
    for i in range(runs):
        run = await gql(
            client, START, input={"threadId": thread, "message": MESSAGES[i % 3], "wait": True}
        )
        assert run["startRun"]["status"] == "SUCCESS", run
        thread = run["startRun"]["threadId"]
    assert thread is not None
    page = await gql(client, PLAIN, t=thread, after=None)
    page = await gql(client, PLAIN, t=thread, after=cursor(page))
    return thread, cursor(page)


def cursor(page: dict[str, Any]) -> str:
    end: str = page["thread"]["checkpoints"]["pageInfo"]["endCursor"]
    return end


@asynccontextmanager
async def database(kind: str, tmp: str) -> AsyncIterator[str]:
    """The URL of a fresh database of that kind."""
    if kind == "postgres":
        async with scratch_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp}/changes.sqlite"


async def changes_page(kind: str, samples: int, runs: int) -> dict[str, float]:
    """Median ms of a page of 20 checkpoints: plain, with `values`, with `changes`."""
    times: dict[str, list[float]] = {"plain": [], "values": [], "changes": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with database(kind, tmp) as url:
            replica = Replica(url, Path(tmp))
            try:
                await replica.ready()
                async with httpx.AsyncClient(base_url=replica.http, timeout=60) as client:
                    thread, deep = await long_thread(client, runs)
                    total = "query($t: ID!) { thread(id: $t) { checkpoints { totalCount } } }"
                    count = await gql(client, total, t=thread)
                    checkpoints = count["thread"]["checkpoints"]["totalCount"]
                    assert checkpoints >= 100, checkpoints
                    queries = (("plain", PLAIN), ("changes", CHANGES), ("values", VALUES))
                    for i in range(samples):
                        after = None if i % 2 == 0 else deep
                        for name, query in queries:
                            start = time.perf_counter()
                            got = await gql(client, query, t=thread, after=after)
                            times[name].append((time.perf_counter() - start) * 1000)
                            assert len(got["thread"]["checkpoints"]["edges"]) == 20
            finally:
                replica.stop()
    result = {name: median(values) for name, values in times.items()}
    print(
        f"{kind}: a page of 20 of {checkpoints} checkpoints (median ms over {samples}): "
        f"plain {result['plain']:.2f}, with changes {result['changes']:.2f} "
        f"(ratio {result['changes'] / result['plain']:.2f}x), "
        f"with whole values {result['values']:.2f}"
    )
    return result


async def changes_targets(samples: int = 40, runs: int = 26) -> list[str]:
    """Both backends measured; the target line (the slower backend's ratio)."""
    ratios = []
    for kind in ("postgres", "sqlite"):
        found = await changes_page(kind, samples, runs)
        ratios.append(found["changes"] / found["plain"])
    worst = max(ratios)
    return [target("changes_page_ratio", worst, "< 2x", worst < 2, "x")]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--runs", type=int, default=26)
    args = parser.parse_args()
    lines = await changes_targets(args.samples, args.runs)
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
