"""What an idle `runEvents` subscriber costs a replica, by allocation site (tracemalloc).

    python bench/idle.py [--subscribers 200] [--top 25]

Starts `code-hero serve` on a scratch PostgreSQL database with tracemalloc on,
opens N graphql-transport-ws sockets that each subscribe to one long run and
then wait, and compares the server's allocations before and after, grouped by
the line that allocated them (KB per subscriber). They are summed
by module too. tracemalloc sees Python's allocations only, not the
allocator's slack (bench/scale.py measures RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port, scratch_database
from scale import GRAPHS, Subscriber, start_run, subscribe

LAYERS = ("code_hero", "strawberry", "starlette", "uvicorn", "websockets", "graphql", "psycopg")
SERVER = """
import signal, sys, tracemalloc
tracemalloc.start(int(sys.argv[2]))
count = 0
def dump(signum, frame):
    global count
    tracemalloc.take_snapshot().dump(f"{sys.argv[1]}/{count}.snap")
    count += 1
    print("dumped", flush=True)
signal.signal(signal.SIGUSR1, dump)
from code_hero.cli import main
sys.exit(main(sys.argv[3:]))
"""


async def snapshot(process: subprocess.Popen[bytes], directory: Path, index: int) -> Path:
    """Have the server dump its allocations; wait for the file."""
    process.send_signal(signal.SIGUSR1)
    path = directory / f"{index}.snap"
    for _ in range(600):
        if path.exists():
            await asyncio.sleep(0.5)  # written whole
            return path
        await asyncio.sleep(0.1)
    raise RuntimeError("no snapshot")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--frames", type=int, default=1, help="traceback depth")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database() as url:
            process = subprocess.Popen(  # noqa: ASYNC220 (a bench: one server)
                [
                    *(sys.executable, "-c", SERVER, tmp, str(args.frames)),
                    *("serve", "--database-url", url, "--port", str(port)),
                    *("--log-level", "warning"),
                ],
                env={
                    **os.environ,
                    "PYTHONPATH": str(ROOT / "src"),
                    "CODE_HERO_GRAPHS": GRAPHS,
                    "CODE_HERO_MAX_SUBSCRIPTIONS": "10",
                    "CODE_HERO_FALLBACK_PATH": str(Path(tmp) / "fallback.sqlite"),
                },
                cwd=ROOT,
            )
            try:
                http, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/graphql"
                async with httpx.AsyncClient(base_url=http, timeout=60) as client:
                    for _ in range(1200):  # slow to start with tracemalloc on
                        try:
                            if (await client.get("/healthz")).status_code == 200:
                                break
                        except httpx.HTTPError:
                            pass
                        await asyncio.sleep(0.1)
                    else:
                        raise RuntimeError("the server did not start")
                    run = await start_run(client, graph="slow", input={"delay": 60})
                    warm: list[Subscriber] = [await subscribe(ws, run["id"]) for _ in range(20)]
                    await wait_joined(warm)
                    before = await snapshot(process, Path(tmp), 0)
                    subs = [await subscribe(ws, run["id"]) for _ in range(args.subscribers)]
                    await wait_joined(subs)
                    await asyncio.sleep(1)
                    after = await snapshot(process, Path(tmp), 1)
                report(before, after, args.subscribers, args.top)
            finally:
                process.terminate()
                process.wait(20)


async def wait_joined(subs: list[Subscriber]) -> None:
    """Until every subscriber has had its first event."""
    deadline = time.perf_counter() + 120
    while not all(s.first for s in subs):
        if time.perf_counter() > deadline:
            raise RuntimeError("subscribers did not all join")
        await asyncio.sleep(0.05)


def report(before: Path, after: Path, count: int, top: int) -> None:
    """The allocation sites that grew, in KB per subscriber."""
    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    stats = new.compare_to(old, "traceback")
    total = sum(s.size_diff for s in stats)
    print(f"Python allocations per idle subscriber: {total / count / 1024:.1f} KB")
    modules: dict[str, int] = {}
    for stat in stats:  # by the innermost frame in a package we know (the layer that asked)
        name = Path(stat.traceback[-1].filename).name
        for frame in reversed(stat.traceback):
            package = next((p for p in LAYERS if f"/{p}/" in frame.filename), None)
            if package is not None:
                name = package
                break
        modules[name] = modules.get(name, 0) + stat.size_diff
    for name, size in sorted(modules.items(), key=lambda m: -m[1])[:12]:
        print(f"{size / count / 1024:7.2f} KB  {name}")
    for stat in stats[:top]:
        where = " <- ".join(
            f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno}"
            for f in reversed(stat.traceback)
        )
        print(
            f"{stat.size_diff / count / 1024:7.2f} KB {stat.count_diff / count:6.1f} obj  {where}"
        )


if __name__ == "__main__":
    asyncio.run(main())
