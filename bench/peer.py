"""The gateway against LangGraph's own server, side by side in one run.

    pip install -e '.[peer]'      # langgraph-cli[inmem]: bench only, never at runtime
    python bench/peer.py [--seconds 4] [--repeats 200] [--rounds 3] [--rows runs_concurrent]
                         [--servers sqlite]

Starts `langgraph dev` (in-memory, offline) and `code-hero serve` (its SQLite
default, and a second one on a scratch PostgreSQL database) on the same 4-node
graph (`bench/chain.py`, through one langgraph.json), all three at once, drives
them with the same httpx client and prints one row per operation a client makes.
The servers take turns: request by request for the latency rows (which one goes
first moves each turn), round by round for the throughput rows (`--rounds`, the
median), so that the shared machine's noise and drift land on all of them alike
rather than on whichever server's block they fell in (measured one server after
another, the thread-list ratio of one build ranged 0.66x to 1.14x across runs):

- create a thread, run the graph, wait for the end: sequentially, and with 16
  clients at once (runs per second);
- from asking for a run to seeing its first node update: the peer's
  `/threads/{id}/runs/stream`; the gateway's `runStream` subscription on an
  already open WebSocket when it serves one, else `startRun` then `runEvents`
  on that socket;
- a history page of 20 checkpoints of a thread with 100 and more;
- a page of 10 threads with 1,000 and more stored;
- deleting a thread;
- the server's memory (resident, the whole process tree) after all that.

Then one target line per row the performance issue sets a goal for.

`--rows` and `--servers` measure a part (the peer always: the ratios are what
count). The "16 clients" row prints the client's own CPU share: one Python
process drives every server, and near a whole core it would be the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from _common import Replica, free_port, gql, median, scratch_database, target, throughput
from websockets.asyncio.client import ClientConnection, connect

HERE = Path(__file__).resolve().parent
GRAPH = "small"
INPUT = {"steps": []}
CLIENTS = 16
SERVE_ENV = {"CODE_HERO_MAX_CONCURRENT_RUNS": "32"}

START = "mutation($input: StartRunInput!) { startRun(input: $input) { id threadId status } }"
HISTORY = """query($id: ID!) { thread(id: $id) { checkpoints(first: 20) { edges { node {
  id parentId step source createdAt values next metadata } } } } }"""
THREADS = """query { threads(first: 10) { edges { node {
  id status createdAt updatedAt metadata } } pageInfo { hasNextPage endCursor } } }"""
DELETE = "mutation($id: ID!) { deleteThread(id: $id) { deleted } }"
RUN_EVENTS = "subscription($id: ID!) { runEvents(runId: $id) { seq __typename } }"
RUN_STREAM = """subscription($input: StartRunInput!) {
  runStream(input: $input, types: [NODE_UPDATE, RUN_STATUS_CHANGED]) { seq runId __typename } }"""


def tree_rss_kib(pid: int) -> int:
    """Resident memory of a process and all its descendants."""
    out = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,rss="], capture_output=True, text=True, check=True
    ).stdout
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for line in out.splitlines():
        p, pp, r = (int(x) for x in line.split())
        children.setdefault(pp, []).append(p)
        rss[p] = r
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


# ---------------------------------------------------------------- the two servers


class Peer:
    """`langgraph dev` serving bench/chain.py from a langgraph.json in `folder`."""

    def __init__(self, folder: Path) -> None:
        exe = shutil.which("langgraph", path=str(Path(sys.executable).parent)) or shutil.which(
            "langgraph"
        )
        if exe is None:
            raise SystemExit("langgraph dev is not installed: pip install -e '.[peer]'")
        self.port = free_port()
        self.log = open(folder / "peer.log", "wb")
        env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false"}
        self.process = subprocess.Popen(
            [
                *(exe, "dev", "--no-browser", "--no-reload"),
                *("--host", "127.0.0.1", "--port", str(self.port)),
            ],
            cwd=folder,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # it forks: stop the whole group
        )
        self.http = f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(600):
                try:
                    if (await client.get(f"{self.http}/ok")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("langgraph dev did not start: see peer.log")

    def rss_kib(self) -> int:
        return tree_rss_kib(self.process.pid)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


class PeerClient:
    """What a client of LangGraph's server does, over its REST API."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def new_thread(self) -> str:
        r = await self.http.post("/threads", json={})
        r.raise_for_status()
        return str(r.json()["thread_id"])

    async def run_wait(self, thread_id: str | None = None) -> str:
        thread_id = thread_id or await self.new_thread()
        r = await self.http.post(
            f"/threads/{thread_id}/runs/wait", json={"assistant_id": GRAPH, "input": INPUT}
        )
        r.raise_for_status()
        return thread_id

    async def first_update(self) -> float:
        thread_id = await self.new_thread()
        body = {"assistant_id": GRAPH, "input": INPUT, "stream_mode": ["updates"]}
        start = time.perf_counter()
        seen = None
        async with self.http.stream("POST", f"/threads/{thread_id}/runs/stream", json=body) as r:
            async for line in r.aiter_lines():
                if seen is None and line.startswith("event: updates"):
                    seen = time.perf_counter() - start
        assert seen is not None, "no updates event"
        return seen

    async def history(self, thread_id: str) -> None:
        r = await self.http.post(f"/threads/{thread_id}/history", json={"limit": 20})
        r.raise_for_status()
        assert len(r.json()) == 20

    async def threads(self) -> None:
        r = await self.http.post("/threads/search", json={"limit": 10})
        r.raise_for_status()
        assert len(r.json()) == 10

    async def delete(self, thread_id: str) -> None:
        (await self.http.delete(f"/threads/{thread_id}")).raise_for_status()


class GatewayClient:
    """The same operations over the gateway's GraphQL API."""

    def __init__(self, http: httpx.AsyncClient, ws_url: str, has_run_stream: bool) -> None:
        self.http = http
        self.ws_url = ws_url
        self.has_run_stream = has_run_stream
        self.ws: ClientConnection | None = None
        self.ids = 0

    async def run_wait(self, thread_id: str | None = None) -> str:
        fields = {"graph": GRAPH, "input": INPUT, "wait": True, "threadId": thread_id}
        run = (await gql(self.http, START, input=fields))["startRun"]
        if run["status"] != "SUCCESS":
            raise RuntimeError(run)
        return str(run["threadId"])

    async def open_socket(self) -> None:
        protocols: Any = ["graphql-transport-ws"]
        self.ws = await connect(self.ws_url, subprotocols=protocols, max_queue=None)
        await self.ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await self.ws.recv())["type"] == "connection_ack"

    async def _subscribe(self, query: str, variables: dict[str, Any]) -> str:
        assert self.ws is not None
        self.ids += 1
        op = str(self.ids)
        payload = {"query": query, "variables": variables}
        await self.ws.send(json.dumps({"id": op, "type": "subscribe", "payload": payload}))
        return op

    async def _until(self, op: str, first_update: Callable[[dict[str, Any]], bool]) -> float | None:
        """Read the socket until `op` completes; the time the first node update came."""
        assert self.ws is not None
        seen = None
        async for raw in self.ws:
            message = json.loads(raw)
            if message.get("id") != op:
                continue
            if message["type"] == "next":
                if "errors" in message["payload"]:
                    raise RuntimeError(message["payload"]["errors"])
                if seen is None and first_update(message["payload"]["data"]):
                    seen = time.perf_counter()
            elif message["type"] in ("complete", "error"):
                if message["type"] == "error":
                    raise RuntimeError(message["payload"])
                return seen
        return seen

    async def first_update(self) -> float:
        """On the open socket: runStream if served, else startRun then runEvents."""
        start = time.perf_counter()
        if self.has_run_stream:
            fields = {"graph": GRAPH, "input": INPUT}
            op = await self._subscribe(RUN_STREAM, {"input": fields})
            seen = await self._until(op, lambda d: d["runStream"]["__typename"] == "NodeUpdate")
        else:
            run = (await gql(self.http, START, input={"graph": GRAPH, "input": INPUT}))["startRun"]
            op = await self._subscribe(RUN_EVENTS, {"id": run["id"]})
            seen = await self._until(op, lambda d: d["runEvents"]["__typename"] == "NodeUpdate")
        assert seen is not None, "no NodeUpdate"
        return seen - start

    async def history(self, thread_id: str) -> None:
        data = await gql(self.http, HISTORY, id=thread_id)
        assert len(data["thread"]["checkpoints"]["edges"]) == 20

    async def threads(self) -> None:
        assert len((await gql(self.http, THREADS))["threads"]["edges"]) == 10

    async def delete(self, thread_id: str) -> None:
        assert (await gql(self.http, DELETE, id=thread_id))["deleteThread"]["deleted"]

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


# ---------------------------------------------------------------- the measurements


def rotations(names: list[str], turn: int) -> list[str]:
    """`names` starting at `turn`: which server goes first moves round by round."""
    k = turn % len(names)
    return names[k:] + names[:k]


async def interleaved(
    calls: Mapping[str, Callable[[], Awaitable[Any]]], repeats: int
) -> dict[str, float]:
    """Median milliseconds of each server's call, the servers taking turns call by call
    (after a few warm-up calls each): a moment of the shared machine's noise lands on
    all of them, not on one server's block."""
    names = list(calls)
    for name in names:
        for _ in range(5):
            await calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(repeats):
        for name in rotations(names, turn):
            start = time.perf_counter()
            await calls[name]()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: median(got) for name, got in times.items()}


async def measure_all(
    clients: dict[str, Any],
    rss: dict[str, Callable[[], int]],
    seconds: float,
    repeats: int,
    rows: set[str],
    rounds: int = 3,
) -> dict[str, dict[str, float]]:
    """The `rows` of the table for each server (by name), the servers taking turns:
    call by call for the latency rows, round by round (`rounds` of `seconds` each,
    the median) for the throughput rows."""
    names = list(clients)
    table: dict[str, dict[str, float]] = {name: {} for name in names}
    made = dict.fromkeys(names, 0)

    def sequential(name: str) -> Callable[[int, int], Awaitable[None]]:
        async def run(worker: int, i: int) -> None:
            await clients[name].run_wait()
            made[name] += 1

        return run

    async def rate(key: str, workers: int) -> None:
        got: dict[str, list[float]] = {name: [] for name in names}
        for turn in range(rounds):
            for name in rotations(names, turn):
                # The client's own CPU over the row: near one core, it would be the
                # client (one process) that the row measures, not the server.
                cpu = time.process_time()
                rps, fail = await throughput(sequential(name), workers=workers, seconds=seconds)
                got[name].append(rps)
                if workers > 1:
                    share = (time.process_time() - cpu) / seconds
                    print(f"  {name}: {rps:.1f} runs/s, client CPU {share:.0%}", flush=True)
                if fail:
                    print(f"  {name}: {fail} failed runs", flush=True)
        for name in names:
            table[name][key] = median(got[name])

    if "runs_sequential" in rows:
        await rate("runs_sequential", 1)
    if "runs_concurrent" in rows:
        await rate("runs_concurrent", CLIENTS)

    if "first_update_ms" in rows:
        firsts: dict[str, list[float]] = {name: [] for name in names}
        for turn in range(60):
            for name in rotations(names, turn):
                firsts[name].append(await clients[name].first_update() * 1000)
        for name in names:
            table[name]["first_update_ms"] = median(firsts[name])

    if "history_ms" in rows:
        histories = {}
        for name in names:
            histories[name] = await clients[name].run_wait()
            for _ in range(30):  # 4 nodes: 5 checkpoints a run
                await clients[name].run_wait(histories[name])
        pages = {name: partial(clients[name].history, histories[name]) for name in names}
        for name, ms in (await interleaved(pages, repeats)).items():
            table[name]["history_ms"] = ms

    if "threads_ms" in rows or "delete_ms" in rows:
        # A page of 10 out of 1,000 threads and more; deletions from as full a store
        # (the peer's in-memory deletion scans all of it).
        for name in names:
            while made[name] < 1_000:
                await asyncio.gather(*(clients[name].run_wait() for _ in range(CLIENTS)))
                made[name] += CLIENTS
    if "threads_ms" in rows:
        lists = {name: clients[name].threads for name in names}
        for name, ms in (await interleaved(lists, repeats)).items():
            table[name]["threads_ms"] = ms

    if "delete_ms" in rows:
        count = min(repeats, 100)
        doomed = {
            name: iter([await clients[name].run_wait() for _ in range(count + 5)]) for name in names
        }
        deletes = {
            name: (lambda name=name: clients[name].delete(next(doomed[name]))) for name in names
        }
        for name, ms in (await interleaved(deletes, count)).items():
            table[name]["delete_ms"] = ms

    if "rss_mib" in rows:
        for name in names:
            table[name]["rss_mib"] = rss[name]() / 1024
    return table


async def measure(
    client: Any, rss: Callable[[], int], seconds: float, repeats: int, rows: set[str]
) -> dict[str, float]:
    """The `rows` of the table for one server (one round of each throughput row)."""
    return (await measure_all({"one": client}, {"one": rss}, seconds, repeats, rows, 1))["one"]


ROWS = [
    ("runs_sequential", "create + run + wait, sequential (runs/s)", True),
    ("runs_concurrent", f"same, {CLIENTS} clients at once (runs/s)", True),
    ("first_update_ms", "ask for a run -> first node update (ms)", False),
    ("history_ms", "history page of 20, 150-checkpoint thread (ms)", False),
    ("threads_ms", "thread list page of 10, 1,000+ threads (ms)", False),
    ("delete_ms", "delete a thread (ms)", False),
    ("rss_mib", "server memory, process tree (MiB)", False),
]


# (target name, row, goal): how many times better than the peer the gateway must be.
TARGETS = [
    ("threads_page", "threads_ms", 1.0),
    ("delete_thread", "delete_ms", 1.0),
    ("first_update", "first_update_ms", 2.0),
    ("concurrent_runs", "runs_concurrent", 2.0),
    ("history_page", "history_ms", 2.0),
    ("memory", "rss_mib", 2.0),  # at most half the peer's
    ("sequential_runs", "runs_sequential", 1.0),  # kept
]


def advantage(key: str, gateway: float, peer: float) -> float:
    """How many times better the gateway does than the peer (> 1: better)."""
    higher_is_better = next(h for k, _, h in ROWS if k == key)
    return gateway / peer if higher_is_better else peer / gateway


def better(key: str, gateway: float, peer: float) -> str:
    ratio = advantage(key, gateway, peer)
    return f"{ratio:.2f}x {'better' if ratio >= 1 else 'worse'}"


@asynccontextmanager
async def gateway_client(replica: Replica) -> AsyncIterator[GatewayClient]:
    """A client of a started `code-hero serve`, its WebSocket open."""
    await replica.ready()
    async with httpx.AsyncClient(base_url=replica.http, timeout=60) as http:
        schema = await gql(http, '{ __type(name: "Subscription") { fields { name } } }')
        fields = {f["name"] for f in schema["__type"]["fields"]}
        client = GatewayClient(http, replica.ws, "runStream" in fields)
        await client.open_socket()
        try:
            yield client
        finally:
            await client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of each throughput row, per server"
    )
    parser.add_argument(
        "--rows",
        default=",".join(key for key, _, _ in ROWS),
        help="comma-separated rows to measure (default: all): "
        + ", ".join(key for key, _, _ in ROWS),
    )
    parser.add_argument(
        "--servers",
        default="peer,sqlite,postgres",
        help="comma-separated servers to measure, the peer always among them "
        "(default: peer,sqlite,postgres)",
    )
    args = parser.parse_args()
    rows = set(args.rows.split(","))
    servers = set(args.servers.split(",")) | {"peer"}
    if unknown := rows - {key for key, _, _ in ROWS}:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    if unknown := servers - {"peer", "sqlite", "postgres"}:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy(HERE / "chain.py", folder / "chain.py")
        spec = {"dependencies": ["."], "graphs": {GRAPH: "./chain.py:graph"}}
        (folder / "langgraph.json").write_text(json.dumps(spec))
        serve_args = {"CODE_HERO_LANGGRAPH_JSON": str(folder / "langgraph.json"), **SERVE_ENV}
        # All three serve at once, and take turns (see `measure_all`).
        async with AsyncExitStack() as stack:
            clients: dict[str, Any] = {}
            rss: dict[str, Callable[[], int]] = {}
            peer = Peer(folder)
            stack.callback(peer.stop)
            if "sqlite" in servers:
                sqlite = Replica(f"sqlite:///{folder / 'gateway.sqlite'}", folder, **serve_args)
                stack.callback(sqlite.stop)
            if "postgres" in servers:
                url = await stack.enter_async_context(scratch_database("ch_peer"))
                pg = Replica(url, folder, **serve_args)
                stack.callback(pg.stop)
            await peer.ready()
            http = await stack.enter_async_context(
                httpx.AsyncClient(base_url=peer.http, timeout=60)
            )
            clients["peer"], rss["peer"] = PeerClient(http), peer.rss_kib
            if "sqlite" in servers:
                clients["sqlite"] = await stack.enter_async_context(gateway_client(sqlite))
                rss["sqlite"] = sqlite.rss_kib
            if "postgres" in servers:
                clients["postgres"] = await stack.enter_async_context(gateway_client(pg))
                rss["postgres"] = pg.rss_kib
            print(f"measuring {', '.join(clients)}, taking turns ...", flush=True)
            results = await measure_all(clients, rss, args.seconds, args.repeats, rows, args.rounds)

    peer_row = results["peer"]
    columns = [(c, results[c]) for c in ("sqlite", "postgres") if c in results]
    names = {"sqlite": "gateway (SQLite)", "postgres": "gateway (PostgreSQL)"}
    first = columns[0] if columns else None
    print()
    print(
        f"| operation | {' | '.join(names[c] for c, _ in columns)} | langgraph dev "
        f"| {f'{names[first[0]]} vs peer |' if first else ''}"
    )
    print(f"|---|{'---|' * len(columns)}---|{'---|' if first else ''}")
    for key, title, _ in ROWS:
        if key not in rows:
            continue
        cells = "".join(f" {got[key]:.3g} |" for _, got in columns)
        vs = f" {better(key, first[1][key], peer_row[key])} |" if first else ""
        print(f"| {title} |{cells} {peer_row[key]:.3g} |{vs}")
    print()
    lines = [
        target(
            f"peer_{name}_{column}",
            advantage(key, got[key], peer_row[key]),
            f">= {goal}x",
            advantage(key, got[key], peer_row[key]) >= goal,
            "x",
        )
        for column, got in columns
        for name, key, goal in TARGETS
        if key in rows
    ]
    for line in lines:
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
