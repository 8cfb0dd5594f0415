"""deleteThread and a thread page of 10: two builds side by side, alternating.

    python bench/ab.py --before REV [--samples 100] [--threads 1000] [--database postgres|sqlite]

Serves `git archive REV src` (before) and this tree's `src` (after) with `code-hero
serve` on one scratch database, PostgreSQL or one SQLite file both servers open (the
before first, so each runs its own migrations; an older build ignores a newer one's),
fills it with `--threads` threads of one run of the 4-node graph (`bench/chain.py`, as
`bench/peer.py`'s list and delete rows), then alternates the two servers request by
request (which goes first alternates too) with the same httpx client. Prints, per
operation and build, the median milliseconds and its lower quartile (less of the shared
machine's noise), the server's CPU per operation (its process tree, /proc), and the
median of the paired after/before ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import psycopg
from _common import ROOT, Replica, gql, median, scratch_database
from peer import DELETE, START, THREADS

HERE = Path(__file__).resolve().parent
GRAPHS = {"CODE_HERO_GRAPHS": f"small={HERE / 'chain.py'}:graph"}
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(stat[11]) + int(stat[12])) / TICK
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        total += tree_cpu(int(child))
    return total


def sources(rev: str, into: Path) -> Path:
    """The `src` folder of `rev`, unpacked under `into`."""
    archive = into / "src.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "src"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


async def run_once(client: httpx.AsyncClient) -> str:
    data = await gql(client, START, input={"graph": "small", "input": {"steps": []}, "wait": True})
    return str(data["startRun"]["threadId"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare against")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1000)
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument(
        "--no-flush",
        action="store_true",
        help="the scratch database's synchronous_commit off: for the measurement only, to "
        "see the rest apart from the commit's WAL flush on a machine whose disk is busy",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ab-") as tmp:
        folder = Path(tmp)
        trees = {"before": sources(args.before, folder), "after": ROOT / "src"}
        if args.database == "sqlite":
            await serve(trees, f"sqlite:///{folder / 'ab.sqlite'}", folder, args)
            return
        async with scratch_database("ch_ab") as url:
            if args.no_flush:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    name = conn.info.dbname
                    await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
            await serve(trees, url, folder, args)


async def serve(trees: dict[str, Path], url: str, folder: Path, args: argparse.Namespace) -> None:
    servers: dict[str, Replica] = {}
    try:
        for name, src in trees.items():  # one after the other: their migrations
            servers[name] = Replica(url, folder, PYTHONPATH=str(src), **GRAPHS)
            await servers[name].ready()
        await compare(servers, args.samples, args.threads)
    finally:
        for server in servers.values():
            server.stop()


async def compare(servers: dict[str, Replica], samples: int, threads: int) -> None:
    clients = {n: httpx.AsyncClient(base_url=s.http, timeout=60) for n, s in servers.items()}
    try:
        fill = clients["after"]
        for _ in range(0, threads, 16):
            await asyncio.gather(*(run_once(fill) for _ in range(16)))
        doomed = [await run_once(fill) for _ in range(2 * (samples + 5))]
        for client in clients.values():  # warm-up: 5 of each on each
            for _ in range(5):
                await gql(client, DELETE, id=doomed.pop())
                await gql(client, THREADS)
        ops = {
            "deleteThread": lambda c: gql(c, DELETE, id=doomed.pop()),
            "threads(first: 10)": lambda c: gql(c, THREADS),
        }
        for label, op in ops.items():
            times: dict[str, list[float]] = {name: [] for name in servers}
            cpu = dict.fromkeys(servers, 0.0)
            for i in range(samples):
                order = list(servers) if i % 2 == 0 else list(servers)[::-1]
                for name in order:
                    pid = servers[name].process.pid
                    before = tree_cpu(pid)
                    start = time.perf_counter()
                    await op(clients[name])
                    times[name].append((time.perf_counter() - start) * 1000)
                    cpu[name] += tree_cpu(pid) - before
            ratios = [a / b for a, b in zip(times["after"], times["before"], strict=True)]
            print(f"{label} ({samples} pairs):")
            for name in servers:
                quartile = statistics.quantiles(times[name], n=4)[0]
                print(
                    f"  {name:6s} {median(times[name]):.3f} ms median ({quartile:.3f} lower "
                    f"quartile), server CPU {cpu[name] / samples * 1000:.3f} ms/op"
                )
            print(f"  after/before, median of paired ratios: {median(ratios):.3f}")
    finally:
        for client in clients.values():
            await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
