"""Replicas on one PostgreSQL, measured side by side in one run.

    python bench/scale.py [--seconds 6] [--subscribers 1000] [--verbose]

1. Runs per second of a small 4-node graph with 64 runs in flight, through
   one `code-hero serve` process and through two on the same database
   (startRun with wait over HTTP, clients spread over the replicas).
2. The delay from an event being stored to its arrival at a WebSocket
   subscriber on the other replica, median and 99th percentile: "stored" is
   its batch's NOTIFY reaching a listener in a process of its own (sent right
   after the commit, heard at the same time as the other replica hears it);
   also from the event's creation on the executing replica (its `at`, before
   the event log's 25 ms batch window) to its arrival. Runs are started on A,
   and kept only when A executed them (the lease owner while they run): B
   claims some itself and hears those events before they are stored.
3. N WebSocket subscribers on one run, half on each replica: every one
   receives every event; the spread between the first and the last
   subscriber to receive each event (99th percentile) among the events stored
   after every subscriber had joined (had its first event), the target; the
   events replayed while the sockets were still opening are reported apart.
   And the memory each idle subscriber costs its replica (RSS growth / N).
   The load generator is one process reading every socket on the same cores:
   it timestamps raw frames and parses them after the run, and prints its own
   time per frame so the reader sees how much of a spread it can explain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, Replica, gql, scratch_database, target

GRAPHS = (
    f"small={ROOT / 'bench' / 'chain.py'}:small_graph,"
    f"slow={ROOT / 'tests' / 'runs' / 'slow_graph.py'}:graph"
)
START = "mutation($input: StartRunInput!) { startRun(input: $input) { id status } }"
SUBSCRIBE = "subscription($id: ID!) { runEvents(runId: $id) { seq at __typename } }"
ENDS = (b'"type":"complete"', b'"type":"error"')  # a subscription's last message
FLUSH_MS = 25  # the event log's batch window (EventLog.flush_interval)
VERBOSE = False
REPLICA_ENV = {
    "CODE_HERO_GRAPHS": GRAPHS,
    "CODE_HERO_MAX_CONCURRENT_RUNS": "32",
    "CODE_HERO_MAX_SUBSCRIPTIONS": "10",
}


async def start_run(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    run: dict[str, Any] = (await gql(client, START, input=fields))["startRun"]
    return run


async def throughput(
    replicas: list[Replica], seconds: float, in_flight: int = 64
) -> tuple[float, int]:
    clients = [
        httpx.AsyncClient(
            base_url=r.http, timeout=60, limits=httpx.Limits(max_connections=in_flight)
        )
        for r in replicas
    ]
    done = failures = 0
    deadline = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal done, failures
        client = clients[i % len(clients)]
        while time.perf_counter() < deadline:
            try:
                run = await start_run(client, graph="small", input={"steps": []}, wait=True)
                if run["status"] == "SUCCESS":
                    done += 1
                else:
                    failures += 1
            except Exception:
                failures += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(in_flight)))
    elapsed = time.perf_counter() - start
    for client in clients:
        await client.aclose()
    return done / elapsed, failures


class Subscriber(asyncio.Protocol):
    """One WebSocket subscriber: when each of its frames arrived, parsed afterwards.

    A light receive path (sans-I/O websockets on a bare asyncio protocol): once
    subscribed, the moment data is readable it is timestamped and kept as
    bytes; no frame is parsed until the run has ended, so the load generator's own work (a single
    process reading every socket on the same cores) adds as little as it can
    to what is measured. `busy` is the CPU time spent in its receive callbacks.
    """

    def __init__(self, url: str, run_id: str) -> None:
        self.ws = ClientProtocol(
            parse_uri(url), subprotocols=[Subprotocol("graphql-transport-ws")], max_size=None
        )
        self.run_id = run_id
        self.chunks: list[tuple[float, float, bytes]] = []  # (perf_counter, time, bytes)
        self.tail = b""
        self.frames = 0  # text frames, once parsed
        self.arrivals: dict[int, float] = {}  # seq -> perf_counter
        self.created: dict[int, float] = {}  # seq -> the event's `at` (epoch seconds)
        self.received: dict[int, float] = {}  # seq -> time.time() of its arrival
        self.errors: list[Any] = []
        self.acked = False
        self.busy = 0.0
        self.first = 0.0  # perf_counter of the first `next`
        self.done = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now, wall, cpu = time.perf_counter(), time.time(), time.thread_time()
        if self.acked:  # subscribed: keep the bytes with their time, parse them later
            self.chunks.append((now, wall, data))
            if not self.first:
                self.first = now
            probe = self.tail + data[:24]  # an end split over two reads
            if any(end in data or end in probe for end in ENDS):
                self._finish()
            self.tail = data[-24:]
            self.busy += time.thread_time() - cpu
            return
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Response):
                self.ws.send_text(b'{"type":"connection_init","payload":{}}')
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                if json.loads(event.data).get("type") == "connection_ack":
                    self.acked = True
                    variables = {"id": self.run_id}
                    payload = {"query": SUBSCRIBE, "variables": variables}
                    message = {"id": "1", "type": "subscribe", "payload": payload}
                    self.ws.send_text(json.dumps(message).encode())
        self._flush()
        self.busy += time.thread_time() - cpu

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.errors.append(f"connection lost: {exc}")
            self._finish()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            if chunk:
                self.transport.write(chunk)

    def _finish(self) -> None:
        if self.transport is not None:  # no close frame: the bytes kept are parsed later
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def parse(self) -> None:
        """Read the kept bytes: each event's arrival, creation time and any error."""
        for now, wall, data in self.chunks:
            self.ws.receive_data(data)
            for event in self.ws.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    self.frames += 1
                    self._read(now, wall, json.loads(event.data))
        self.chunks.clear()

    def _read(self, now: float, wall: float, message: dict[str, Any]) -> None:
        if message.get("type") == "next" and message["payload"].get("errors"):
            self.errors.append(message["payload"]["errors"])
        elif message.get("type") == "next":
            event = message["payload"]["data"]["runEvents"]
            self.arrivals[event["seq"]] = now
            self.received[event["seq"]] = wall
            self.created[event["seq"]] = datetime.fromisoformat(event["at"]).timestamp()
        elif message.get("type") == "error":
            self.errors.append(message.get("payload"))


async def subscribe(url: str, run_id: str) -> Subscriber:
    """Open one subscriber's socket (its handshake and subscription go on by themselves)."""
    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(lambda: Subscriber(url, run_id), uri.host, uri.port)
    return protocol


LISTENER = """
import sys, time, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute("LISTEN code_hero_events")
    print("ready", flush=True)
    for note in conn.notifies():
        print(time.perf_counter(), note.payload, flush=True)
"""


class CommitListener:
    """When each batch's NOTIFY reached a listener of its own (another process).

    The NOTIFY goes out right after its batch commits and reaches every
    listener at once, the other replica's included; a process of its own
    keeps the timestamp clear of the load generator's event loop (which,
    shared, read it after the subscriber's frame: negative delays).
    """

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", LISTENER, url], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the commit listener did not start")

    def stop(self) -> dict[tuple[str, int], float]:
        """Every (run id, seq) heard, with the perf_counter of its NOTIFY."""
        self.process.terminate()
        out, _ = self.process.communicate()
        heard: dict[tuple[str, int], float] = {}
        for line in out.splitlines():
            at, rid, _, first, last = line.split(" ")
            for seq in range(int(first), int(last) + 1):
                heard.setdefault((rid, seq), float(at))
        return heard


def cpu_seconds(pid: int, system: bool = False) -> float:
    """A process's CPU time so far, user plus system (or system only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[12]) if system else int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of non-empty `values`."""
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * p / 100) - 1, 0)]


async def executor_of(url: str, run_id: str) -> str | None:
    """The lease owner of a run while it executes (the replica that claimed it); None
    when it ended unseen (its end clears the lease)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            cur = await conn.execute(
                "SELECT lease_owner, status FROM code_hero_runs WHERE run_id = %s", (run_id,)
            )
            row = await cur.fetchone()
            if row is not None and row[0] is not None:
                return str(row[0])
            if row is not None and row[1] not in ("PENDING", "RUNNING"):
                return None
            await asyncio.sleep(0.01)


async def owner_of(replica: Replica, url: str) -> str:
    """The name a replica's leases are held under, from a run it executes alone."""
    async with httpx.AsyncClient(base_url=replica.http, timeout=60) as client:
        run = await start_run(client, graph="slow", input={"delay": 0.05}, wait=False)
        owner = await executor_of(url, run["id"])
    if owner is None:
        raise RuntimeError("the probe run ended before its lease was seen")
    return owner


async def cross_replica_delay(
    a: Replica, b: Replica, url: str, a_owner: str, runs: int = 5, tries: int = 20
) -> tuple[list[float], list[float], int, int]:
    """Runs started on A, subscriber on B: (stored, created) -> arrival, ms, of the runs A
    executed (B claims some itself, and hears those events before their commit); and how
    many runs were kept, of how many started."""
    stored: list[float] = []
    created: list[float] = []
    listener = CommitListener(url)
    subs: list[Subscriber] = []
    started = 0
    async with httpx.AsyncClient(base_url=a.http, timeout=60) as client:
        while len(subs) < runs and started < tries:
            started += 1
            run = await start_run(client, graph="slow", input={"delay": 0.05}, wait=False)
            sub = await subscribe(b.ws, run["id"])
            executor = await executor_of(url, run["id"])
            await asyncio.wait_for(sub.done, 60)
            if executor == a_owner:
                subs.append(sub)
    await asyncio.sleep(0.3)  # the last notifications reach the listener
    heard = listener.stop()
    for sub in subs:
        sub.parse()
        if sub.errors:
            raise RuntimeError(sub.errors)
        for seq, arrival in sub.arrivals.items():
            if (sub.run_id, seq) in heard and sub.created[seq] >= sub.received[min(sub.received)]:
                # live on B (not replayed), as its NOTIFY was heard
                stored.append((arrival - heard[sub.run_id, seq]) * 1000)
                created.append((sub.received[seq] - sub.created[seq]) * 1000)
    return stored, created, len(subs), started


async def fan_out(replicas: list[Replica], count: int, py_spy: str | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=replicas[0].http, timeout=60) as client:
        rss_before = [r.rss_kib() for r in replicas]
        run = await start_run(client, graph="slow", input={"delay": 1.5})  # idle at first
        subs: list[Subscriber] = []
        for i in range(count):
            subs.append(await subscribe(replicas[i % len(replicas)].ws, run["id"]))
        # Joined: every subscriber has had its first event (a replay of what was stored).
        deadline = time.perf_counter() + 120
        while not all(s.first for s in subs):
            if time.perf_counter() > deadline:
                raise RuntimeError("subscribers did not all join")
            await asyncio.sleep(0.01)
        joined = max(s.first for s in subs)
        await asyncio.sleep(0.5)
        rss_after = [r.rss_kib() for r in replicas]
        per_sub_kb = (sum(rss_after) - sum(rss_before)) / count
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        server_cpu = [cpu_seconds(r.process.pid) for r in replicas]
        server_sys = [cpu_seconds(r.process.pid, system=True) for r in replicas]
        busy_before = sum(s.busy for s in subs)
        profilers = [  # py-spy on each replica while the live events flow
            subprocess.Popen(  # noqa: ASYNC220 (a bench: started once, not awaited)
                [
                    *(py_spy, "record", "--pid", str(r.process.pid), "--nonblocking"),
                    *("--format", "raw", "-o", f"/tmp/fanout-{i}.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i, r in enumerate(replicas)
            if py_spy
        ]
        await asyncio.wait_for(asyncio.gather(*(s.done for s in subs)), 180)
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
        pairs = zip(replicas, server_cpu, strict=True)
        server_cpu = [cpu_seconds(r.process.pid) - c for r, c in pairs]
        pairs = zip(replicas, server_sys, strict=True)
        server_sys = [cpu_seconds(r.process.pid, system=True) - c for r, c in pairs]
        busy = sum(s.busy for s in subs) - busy_before
        for profiler in profilers:
            profiler.send_signal(signal.SIGINT)
            profiler.wait()
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    for s in subs:
        s.parse()
    errors = [e for s in subs for e in s.errors]
    if errors:
        print(f"{len(errors)} subscribers got errors, the first: {errors[0]}")
    all_seqs = set().union(*(s.arrivals for s in subs))
    complete = not errors and all(set(s.arrivals) == all_seqs for s in subs)
    got = {q: [s.arrivals[q] for s in subs if q in s.arrivals] for q in all_seqs}
    live = sorted(q for q, times in got.items() if min(times) > joined)
    replay = sorted(set(all_seqs) - set(live))
    spread = {q: (max(t) - min(t)) * 1000 for q, t in got.items()}
    first_latency = [  # created on A -> the first subscriber (either replica)
        min(s.received[q] for s in subs) - s0.created[q] for s0 in subs[:1] for q in live
    ]
    if VERBOSE:
        print("spread by seq (ms):", {q: round(v) for q, v in sorted(spread.items())})
    frames_live = sum(1 for s in subs for t in s.arrivals.values() if t >= wall_before)
    per_frame = busy / max(frames_live, 1)
    return {
        "complete": complete,
        "live": live,
        "replay": replay,
        "live_p99": percentile([spread[q] for q in live], 99) if live else float("nan"),
        "live_median": statistics.median([spread[q] for q in live]) if live else float("nan"),
        "replay_p99": percentile([spread[q] for q in replay], 99) if replay else float("nan"),
        "per_sub_kb": per_sub_kb,
        "client_us_per_frame": per_frame * 1e6,
        "client_ms_per_event": per_frame * count * 1000,  # one event, every subscriber
        "client_cpu_share": cpu / wall,  # of one core, from joined to the run's end
        # the replicas' CPU (user + system) per frame sent while the live events flowed,
        # everything else they did meanwhile included: a figure the machine's load
        # does not change much, unlike the spread
        "server_us_per_frame": sum(server_cpu) / max(frames_live, 1) * 1e6,
        "server_system_share": sum(server_sys) / max(sum(server_cpu), 1e-9),
        "first_latency_ms": statistics.median(first_latency) * 1000 if live else float("nan"),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--verbose", action="store_true", help="the spread of every event")
    parser.add_argument("--py-spy", help="py-spy's path: profile the replicas during fan-out")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with scratch_database() as url:
            a = Replica(url, Path(tmp), **REPLICA_ENV)
            await a.ready()
            if args.seconds > 0:  # 0: the delay and the fan-out only
                one, fail1 = await throughput([a], args.seconds)
                b = Replica(url, Path(tmp), **REPLICA_ENV)
                await b.ready()
                two, fail2 = await throughput([a, b], args.seconds)
                print(
                    f"runs/s, 64 in flight: one replica {one:.1f} (failures {fail1}), "
                    f"two replicas {two:.1f} (failures {fail2}), ratio {two / one:.2f}"
                )
                b.stop()  # the delay: runs executed by A, the subscriber listens on B
            a_owner = await owner_of(a, url)  # A alone: it executes the probe run
            b = Replica(url, Path(tmp), **REPLICA_ENV)
            await b.ready()
            stored, created, kept, started = await cross_replica_delay(a, b, url, a_owner)
            median = statistics.median(stored)
            print(
                "stored (its NOTIFY heard by a listener process) -> subscriber on the other "
                f"replica: median {median:.2f} ms, p99 {percentile(stored, 99):.2f} ms "
                f"({len(stored)} events of the {kept} runs A executed, of {started} started "
                f"on A; B executed the others); created on A (`at`, before the "
                f"{FLUSH_MS} ms batch window) -> arrival: median "
                f"{statistics.median(created):.2f} ms, p99 {percentile(created, 99):.2f} ms"
            )
            lines.append(
                target("cross_replica_event_delay_median", median, "< 10 ms", median < 10, " ms")
            )
            f = await fan_out([a, b], args.subscribers, args.py_spy)
            print(
                f"{args.subscribers} subscribers over two replicas: "
                f"every event to every subscriber: {f['complete']}; "
                f"{len(f['live'])} events stored after all had joined, spread p99 "
                f"{f['live_p99']:.1f} ms (median {f['live_median']:.1f} ms; created -> first "
                f"subscriber {f['first_latency_ms']:.1f} ms); {len(f['replay'])} stored before "
                f"(replayed while sockets opened), spread p99 {f['replay_p99']:.1f} ms; "
                f"{f['per_sub_kb']:.1f} KB per idle subscriber"
            )
            print(
                f"load generator: {f['client_us_per_frame']:.1f} us per frame in its receive "
                f"path ({f['client_ms_per_event']:.1f} ms per event for all subscribers, "
                f"serial), {f['client_cpu_share']:.0%} of a core while the events flowed; "
                f"replicas: {f['server_us_per_frame']:.1f} us of CPU per frame sent "
                f"({f['server_system_share']:.0%} in the kernel)"
            )
            spread, per_sub = f["live_p99"], f["per_sub_kb"]
            lines.append(
                target(
                    "fan_out_p99_spread",
                    spread,
                    "< 100 ms",
                    spread < 100 and f["complete"] and bool(f["live"]),
                    " ms",
                )
            )
            lines.append(
                target("memory_per_idle_subscriber", per_sub, "< 50 KB", per_sub < 50, " KB")
            )
            a.stop()
            b.stop()
    print()
    for line in lines:
        print(line)


if __name__ == "__main__":
    try:  # the lighter loop for the load generator, when it is installed
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
