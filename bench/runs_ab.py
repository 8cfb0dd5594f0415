"""16 clients at once (create, run, wait): two builds side by side, alternating.

    python bench/runs_ab.py --before REV [--server sqlite|postgres] [--rounds 6] [--seconds 3]

Serves `git archive REV src` (before) and this tree's `src` (after) with `code-hero
serve` as `bench/peer.py` serves its "16 clients at once" row (the same 4-node graph
through one langgraph.json, the same environment, the same client code), each on a
database of its own, and drives them in turn for `--seconds` each (which goes first
alternates), `--rounds` times. Prints, per build, the median runs/s and the server's
CPU per run (its process tree, /proc: steadier than wall time on a shared machine),
and the medians of the paired after/before ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _common import ROOT, Replica, median, scratch_database, throughput
from ab import sources, tree_cpu
from peer import CLIENTS, GRAPH, SERVE_ENV, GatewayClient

HERE = Path(__file__).resolve().parent


async def burst(server: Replica, client: GatewayClient, seconds: float) -> tuple[float, float]:
    """Runs/s and server CPU ms per run over one burst of CLIENTS concurrent clients."""

    async def one(worker: int, i: int) -> None:
        await client.run_wait()

    pid = server.process.pid
    cpu, start = tree_cpu(pid), time.perf_counter()
    rps, failures = await throughput(one, workers=CLIENTS, seconds=seconds)
    runs = rps * (time.perf_counter() - start)
    if failures:
        print(f"  ({failures} failed runs)")
    return rps, (tree_cpu(pid) - cpu) / max(runs, 1) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare against")
    parser.add_argument("--server", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runs-ab-") as tmp:
        folder = Path(tmp)
        shutil.copy(HERE / "chain.py", folder / "chain.py")
        spec = {"dependencies": ["."], "graphs": {GRAPH: "./chain.py:graph"}}
        (folder / "langgraph.json").write_text(json.dumps(spec))
        env = {"CODE_HERO_LANGGRAPH_JSON": str(folder / "langgraph.json"), **SERVE_ENV}
        trees = {"before": sources(args.before, folder), "after": ROOT / "src"}
        async with AsyncExitStack() as stack:
            servers: dict[str, Replica] = {}
            for name, src in trees.items():
                if args.server == "sqlite":
                    url = f"sqlite:///{folder / f'{name}.sqlite'}"
                else:
                    url = await stack.enter_async_context(scratch_database("ch_runs_ab"))
                servers[name] = Replica(url, folder, PYTHONPATH=str(src), **env)
                stack.callback(servers[name].stop)
            clients: dict[str, GatewayClient] = {}
            for name, server in servers.items():
                await server.ready()
                http = await stack.enter_async_context(
                    httpx.AsyncClient(base_url=server.http, timeout=60)
                )
                clients[name] = GatewayClient(http, server.ws, False)
                await burst(server, clients[name], 1.0)  # warm-up
            rps: dict[str, list[float]] = {name: [] for name in servers}
            cpu: dict[str, list[float]] = {name: [] for name in servers}
            for i in range(args.rounds):
                order = list(servers) if i % 2 == 0 else list(servers)[::-1]
                for name in order:
                    r, c = await burst(servers[name], clients[name], args.seconds)
                    rps[name].append(r)
                    cpu[name].append(c)
                print(
                    f"round {i + 1}: "
                    + ", ".join(
                        f"{n} {rps[n][-1]:.1f} runs/s {cpu[n][-1]:.2f} ms" for n in servers
                    ),
                    flush=True,
                )
            print(f"{args.server}, {CLIENTS} clients, {args.rounds} rounds of {args.seconds} s:")
            for name in servers:
                print(
                    f"  {name:6s} {median(rps[name]):.1f} runs/s, "
                    f"server CPU {median(cpu[name]):.2f} ms/run (medians)"
                )
            pairs = zip(rps["after"], rps["before"], cpu["after"], cpu["before"], strict=True)
            ratios = [(a / b, c / d) for a, b, c, d in pairs]
            print(
                f"  after/before, median of paired ratios: runs/s "
                f"{median([r for r, _ in ratios]):.3f}, CPU per run "
                f"{median([c for _, c in ratios]):.3f}"
            )


if __name__ == "__main__":
    asyncio.run(main())
