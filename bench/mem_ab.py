"""Two builds' `code-hero serve` memory, side by side, on SQLite and PostgreSQL.

    python bench/mem_ab.py --old /path/to/old/tree [--new .] [--rounds 3]
    python bench/mem_ab.py --old . --new-python /path/to/other/venv/bin/python
    python bench/mem_ab.py --old . --keep /tmp/mem_ab    # keep the servers' logs


Starts one server of each tree's sources (the same config: bench/peer.py's graph
and settings, its fallback file), both at once, drives both with bench/peer.py's
workload at the same time (its rows, shortened: it still fills 1,000 threads),
and reads each process's resident memory (VmRSS, what bench/peer.py reports) and
proportional set size (Pss, /proc/PID/smaps_rollup) after start-up and after
the workload. Rounds alternate which build starts first. Memory only: two servers
on two cores time nothing worth reporting.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _common import Replica, gql, scratch_database, target
from peer import GRAPH, SERVE_ENV, GatewayClient, measure

HERE = Path(__file__).resolve().parent


def memory_kib(pid: int) -> tuple[int, int]:
    """VmRSS and Pss of one process, KiB."""
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    pss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        if line.startswith("Pss:")
    )
    return rss, pss


async def drive(server: Replica, seconds: float, repeats: int) -> dict[str, float]:
    """Start-up and after-workload memory of one server, MiB."""
    await server.ready()
    await asyncio.sleep(1)
    rss0, pss0 = memory_kib(server.process.pid)
    async with httpx.AsyncClient(base_url=server.http, timeout=60) as http:
        schema = await gql(http, '{ __type(name: "Subscription") { fields { name } } }')
        fields = {f["name"] for f in schema["__type"]["fields"]}
        client = GatewayClient(http, server.ws, "runStream" in fields)
        await client.open_socket()
        try:
            rows = {
                "runs_sequential",
                "runs_concurrent",
                "first_update_ms",
                "history_ms",
                "threads_ms",
                "delete_ms",
            }
            await measure(client, lambda: 0, seconds, repeats, rows)
        finally:
            await client.close()
    rss, pss = memory_kib(server.process.pid)
    return {
        "start_rss": rss0 / 1024,
        "start_pss": pss0 / 1024,
        "rss": rss / 1024,
        "pss": pss / 1024,
    }


async def round_(
    trees: dict[str, tuple[Path, str]],
    urls: dict[str, str],
    folder: Path,
    first: str,
    seconds: float,
    repeats: int,
) -> dict[str, dict[str, float]]:
    spec = {"dependencies": ["."], "graphs": {GRAPH: "./chain.py:graph"}}
    (folder / "chain.py").write_text((HERE / "chain.py").read_text())
    (folder / "langgraph.json").write_text(json.dumps(spec))
    env = {"CODE_HERO_LANGGRAPH_JSON": str(folder / "langgraph.json"), **SERVE_ENV}
    order = [first, *(b for b in trees if b != first)]
    servers = {}
    try:
        for build in order:
            tree, python = trees[build]
            servers[build] = Replica(urls[build], folder, python=python, tree=tree, **env)
            await servers[build].ready()
        got = await asyncio.gather(*(drive(servers[b], seconds, repeats) for b in order))
        return dict(zip(order, got, strict=True))
    finally:
        for build, s in servers.items():
            died = s.process.poll()  # before the stop: a server that died under the load
            s.stop()
            if died is not None:
                print(f"  the {build} server had exited ({died}) before the end of the round")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--new", type=Path, default=HERE.parent)
    parser.add_argument("--old-python", default=sys.executable)
    parser.add_argument("--new-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--servers", default="sqlite,postgres")
    parser.add_argument(
        "--keep",
        type=Path,
        help="make each round's folder (the servers' logs) in this directory and keep it",
    )
    # langgraph dev's process tree after bench/peer.py's workload (its last run): this
    # bench starts no peer, the goal's half of it is read from there.
    parser.add_argument("--peer-mib", type=float, default=170.0)
    args = parser.parse_args()
    trees = {
        "old": (args.old.resolve(), args.old_python),
        "new": (args.new.resolve(), args.new_python),
    }
    if args.keep:  # made if missing, as `--keep /tmp/mem_ab` in the usage suggests
        await asyncio.to_thread(Path(args.keep).mkdir, parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for r in range(args.rounds):
        first = "old" if r % 2 == 0 else "new"
        for backend in args.servers.split(","):
            with (
                contextlib.nullcontext(tempfile.mkdtemp(prefix="mem_ab", dir=args.keep))
                if args.keep
                else tempfile.TemporaryDirectory(prefix="mem_ab")
            ) as tmp:
                folder = Path(tmp)
                if backend == "sqlite":
                    urls = {b: f"sqlite:///{folder / b}.sqlite" for b in trees}
                    got = await round_(trees, urls, folder, first, args.seconds, args.repeats)
                else:
                    async with (
                        scratch_database("ch_memab") as old_url,
                        scratch_database("ch_memab") as new_url,
                    ):
                        urls = {"old": old_url, "new": new_url}
                        got = await round_(trees, urls, folder, first, args.seconds, args.repeats)
            for build, m in got.items():
                results.setdefault(backend, {}).setdefault(build, []).append(m)
                print(
                    f"round {r + 1} {backend:8} {build}: start {m['start_rss']:.1f} MiB "
                    f"(pss {m['start_pss']:.1f}), after workload {m['rss']:.1f} "
                    f"(pss {m['pss']:.1f})",
                    flush=True,
                )
    for backend, builds in results.items():
        for key in ("start_rss", "rss", "pss"):
            old = median(m[key] for m in builds["old"])
            new = median(m[key] for m in builds["new"])
            print(f"{backend:8} {key:9} old {old:6.1f}  new {new:6.1f}  ({new - old:+.1f} MiB)")
    peer_mib = args.peer_mib
    for backend, builds in results.items():
        new = median(m["rss"] for m in builds["new"])
        print(
            target(
                f"memory_{backend}_mib", new, f"<= {peer_mib / 2:.0f}", new <= peer_mib / 2, " MiB"
            )
        )


if __name__ == "__main__":
    asyncio.run(main())
