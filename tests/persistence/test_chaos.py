"""A seeded random outage audit: clients keep working while PostgreSQL comes and goes.

Several GraphQL clients start runs (waiting and not), edit state, delete and
prune threads, cancel runs and read, over a real HTTP server, while the fault
proxy in front of PostgreSQL flips between forwarding, refusing and a black
hole at random moments. Every answer is recorded. Once the proxy forwards for
good and the gateway has copied back what it accepted, the primary itself is
checked against what the clients were told:

- no answer was INTERNAL or an unknown code; UNAVAILABLE always had retryAfter;
- every acknowledged run is in PostgreSQL, ended, with the status a client was
  told and the checkpoints it wrote (its last one holds its output);
- every acknowledged updateState checkpoint is in PostgreSQL, as answered;
- a thread whose last operation was an acknowledged write, alone on it, has
  that write as its latest checkpoint;
- every acknowledged deleteThread's thread is gone from PostgreSQL, with its
  checkpoints, runs and events (the copy-back resurrects nothing);
- no checkpoints, runs or events of a thread that has no row;
- no run is left PENDING or RUNNING, none ended ERROR (the graph never fails by
  itself); each run's events are 1..n, ending with the one end its row has;
- no thread is left BUSY without an unfinished run; an end a client was told (a
  waited run, cancelRun) is the stored one, a waited run's output too;
- no read after an acknowledged deletion shows the thread, unless a write on it
  may have made it anew;
- nothing is pending or quarantined.

The seed fixes the clients' choices and the proxy's schedule; the timing of the
event loop is not fixed, so a seed explores around a schedule, not one path
(`CHAOS_SEEDS="1 2 ... 40"` explores more). What it found and was fixed is
pinned by deterministic tests below (and in test_degraded.py); any problem fails
a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg.rows import dict_row

from code_hero.app import create_app
from code_hero.auth import ANONYMOUS
from code_hero.config import create_postgres_checkpointer
from code_hero.errors import BackendUnavailableError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import EventRecord
from code_hero.runs.executor import StartRun
from code_hero.schema.errors import CODES
from code_hero.settings import AppSettings
from tests.conftest import PG_ADMIN_URL
from tests.faults import BlackHoleProxy, until, with_port
from tests.graphql.conftest import SLOW_GRAPH, Server, running

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_database(pg_migrated_database: str) -> str:
    """A database of the test's own with the gateway's tables made (its migrations are
    not what these tests are about)."""
    return pg_migrated_database


PG_PORT = urlsplit(PG_ADMIN_URL).port or 5432

START = """mutation($input: StartRunInput!) {
  startRun(input: $input) { id threadId status output error } }"""
UPDATE = """mutation($input: UpdateStateInput!) { updateState(input: $input) { id values } }"""
DELETE = """mutation($id: ID!) { deleteThread(id: $id) { threadId deleted } }"""
PRUNE = """mutation($input: PruneThreadsInput!) {
  pruneThreads(input: $input) { threadsDeleted checkpointsDeleted } }"""
CANCEL = """mutation($id: ID!) { cancelRun(id: $id) { id status } }"""
THREADS = "{ threads(first: 20) { edges { node { id status } } } }"
HISTORY = """query($id: ID!) {
  thread(id: $id) { id status checkpoints(first: 5) { edges { node { id } } } } }"""
HEALTH = "{ health { status pendingSync quarantined } }"

EXPECTED_CODES = {"UNAVAILABLE", "CONFLICT", "NOT_FOUND"}
FINISHED = {"SUCCESS", "ERROR", "INTERRUPTED", "CANCELLED"}
CLIENTS = 4
LEASE = 3.0
# A hang, not a slow answer: cancelRun waits up to 5 s + the lease for a run that
# executes where it cannot reach it.
NO_ANSWER_AFTER = 30.0
CYCLES = 3
EXTRA_CYCLES = 3  # refusals added while no request was served degraded


@dataclass
class Op:
    """One request a client made, and what it was told."""

    client: int
    kind: str
    thread: str | None
    start: int
    end: int = 0
    data: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    degraded: bool = False
    began: datetime = field(default_factory=lambda: datetime.now(UTC))  # for the story
    ended: datetime | None = None

    @property
    def acked(self) -> bool:
        return self.data is not None and not self.errors


@dataclass
class World:
    """What the clients know: the threads and runs they were told of, every op in order."""

    clock: itertools.count[int] = field(default_factory=itertools.count)
    ops: list[Op] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    thread_of: dict[str, str] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def story(self, thread_id: str) -> str:
        """The ops on a thread, for a failure's message."""
        return "\n".join(
            f"  {o.start}-{o.end} ({o.began:%H:%M:%S.%f}-{o.ended or o.began:%H:%M:%S.%f}) "
            f"c{o.client} {o.kind} degraded={o.degraded} "
            f"{o.data if o.acked else [e.get('extensions', {}) for e in o.errors]}"
            for o in self.ops
            if o.thread == thread_id
        )


async def call(
    http: httpx.AsyncClient,
    world: World,
    client: int,
    kind: str,
    thread: str | None,
    query: str,
    variables: dict[str, Any],
) -> Op:
    op = Op(client, kind, thread, next(world.clock))
    world.ops.append(op)
    try:
        response = await http.post("/graphql", json={"query": query, "variables": variables})
    except httpx.TimeoutException:
        op.end = next(world.clock)
        op.errors = [{"message": "no answer", "extensions": {"code": "NO_ANSWER"}}]
        return op
    op.end, op.ended = next(world.clock), datetime.now(UTC)
    assert response.status_code == 200, (kind, response.text)
    body = response.json()
    op.data = body.get("data")
    op.errors = body.get("errors") or []
    op.degraded = bool((body.get("extensions") or {}).get("degraded"))
    return op


async def client_loop(http: httpx.AsyncClient, world: World, client: int, seed: int) -> None:
    """One client: random operations on the threads and runs it has heard of."""
    rng = random.Random(seed * 1000 + client)
    n = 0
    while not world.stop.is_set():
        n += 1
        thread = rng.choice(world.threads) if world.threads else None
        kind = rng.choices(
            ["new_run", "run", "update", "delete", "prune", "cancel", "read"],
            weights=[4, 4, 3, 1, 1, 1, 3],
        )[0]
        if thread is None and kind in {"run", "update", "delete", "prune", "read"}:
            kind = "new_run"
        config = {"delay": rng.choice([0.0, 0.02, 0.1])}
        if kind in {"new_run", "run"}:
            run_input: dict[str, Any] = {
                "graph": "slow",
                "input": {},
                "config": config,
                "wait": rng.random() < 0.5,
            }
            if kind == "run":
                run_input["threadId"] = thread
            op = await call(http, world, client, kind, thread, START, {"input": run_input})
            op.kind = "run_wait" if run_input["wait"] else "run_async"
            if op.acked:
                assert op.data is not None
                run = op.data["startRun"]
                op.thread = run["threadId"]
                world.runs.append(run["id"])
                world.thread_of[run["id"]] = run["threadId"]
                if kind == "new_run":
                    world.threads.append(run["threadId"])
        elif kind == "update":
            values = {"steps": [f"edit-{client}-{n}"]}
            await call(
                http,
                world,
                client,
                kind,
                thread,
                UPDATE,
                {"input": {"threadId": thread, "values": values}},
            )
        elif kind == "delete":
            op = await call(http, world, client, kind, thread, DELETE, {"id": thread})
            if op.acked and thread in world.threads:
                world.threads.remove(thread)
        elif kind == "prune":
            prune = {"filter": {"ids": [thread]}, "keepLatest": rng.choice([1, 3])}
            await call(http, world, client, kind, thread, PRUNE, {"input": prune})
        elif kind == "cancel":
            if world.runs:
                run_id = rng.choice(world.runs[-5:])
                run_thread = world.thread_of[run_id]
                await call(http, world, client, kind, run_thread, CANCEL, {"id": run_id})
        elif rng.random() < 0.5:
            await call(http, world, client, "read", None, THREADS, {})
        else:
            await call(http, world, client, "read", thread, HISTORY, {"id": thread})
        await asyncio.sleep(rng.choice([0.0, 0.01, 0.05]))


async def chaos(proxy: BlackHoleProxy, seed: int, world: World) -> list[tuple[str, float]]:
    """Flip the proxy at random moments; the schedule it followed.

    Once the seed's cycles are done, it refuses again (up to EXTRA_CYCLES times) while
    no request has been served degraded: the audit wants some, and a seed can miss
    them by timing alone (seed 1219 once, on a loaded machine: two outages of 2 s
    each, no client request served in either; it passed six times in a row after).
    """
    rng = random.Random(seed)
    schedule: list[tuple[str, float]] = []
    for cycle in range(CYCLES + EXTRA_CYCLES):
        if cycle >= CYCLES and served_degraded(world):
            break
        calm = rng.uniform(0.3, 1.5)
        schedule.append(("forward", calm))
        await asyncio.sleep(calm)
        fault = rng.choice(["refuse", "black_hole"]) if cycle < CYCLES else "refuse"
        window = rng.uniform(0.3, 2.0) if cycle < CYCLES else 2.0
        schedule.append((fault, window))
        getattr(proxy, fault)()
        await asyncio.sleep(window)
        proxy.forward()
    schedule.append(("forward", 1.0))
    await asyncio.sleep(1.0)
    return schedule


@pytest.fixture
async def chaos_server(
    pg_database: str,
) -> AsyncIterator[tuple[Server, BlackHoleProxy]]:
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port), pool_timeout=1, health_check_interval=0.2
        )
        # A short lease: a run whose executor lost it to the outage is taken up again
        # soon after the database is back (what a replica does after the lease lapses).
        settings = GatewaySettings(
            checkpointer=config, graphs={"slow": SLOW_GRAPH}, lease_seconds=LEASE
        )
        async with running(create_app(AppSettings(gateway=settings))) as server:
            yield server, proxy


async def connect(url: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
    """A connection of the audit's own, straight to PostgreSQL (not through the proxy).

    It waits out a server whose connection slots are all taken for a moment: the
    server is shared with other suites and benches, and an audit that failed on
    "too many clients" (seeds 948, 949, 959, 1001, 1006, 1009, 1017, each passing
    when run again) said nothing about the gateway. It waits without blocking the
    event loop, which the server under test shares."""
    for attempt in itertools.count():
        try:
            return await psycopg.AsyncConnection.connect(url, **kwargs)
        except psycopg.OperationalError as exc:
            full = "too many clients" in str(exc) or "connection slots are reserved" in str(exc)
            if not full or attempt >= 300:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("unreachable")


async def rows(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    async with await connect(url) as conn:
        return list(await (await conn.execute(sql, params)).fetchall())


def served_degraded(world: World) -> bool:
    """Whether some request was answered, with no error, while the gateway was degraded."""
    return any(op.acked and op.degraded for op in world.ops)


def bad_errors(ops: list[Op]) -> list[tuple[Op, dict[str, Any]]]:
    """Errors no client should see: INTERNAL, an unknown code, UNAVAILABLE without retryAfter."""
    bad = []
    for op in ops:
        for error in op.errors:
            ext = error.get("extensions") or {}
            code = ext.get("code")
            if code not in CODES or code not in EXPECTED_CODES:
                bad.append((op, error))
            elif code == "UNAVAILABLE" and not (ext.get("retryAfter") or 0) >= 1:
                bad.append((op, error))
    return bad


def held_up(error: dict[str, Any]) -> bool:
    """An UNAVAILABLE naming a run: the run was recorded and goes on after the outage."""
    return bool((error.get("extensions") or {}).get("runId"))


def resurrected_in_reads(world: World) -> list[tuple[str | None, str]]:
    """Threads a read showed after their deletion was acknowledged, with no write on them
    since the deletion began (a run started earlier counts as one: it never ends here)."""
    problems: list[tuple[str | None, str]] = []
    deletions = [o for o in world.ops if o.acked and o.kind == "delete" and o.thread]
    writes = [o for o in world.ops if o.kind not in {"read", "delete"} and o.thread]
    for read in (o for o in world.ops if o.acked and o.kind == "read"):
        assert read.data is not None
        if read.thread is not None:
            shown = {read.thread} if read.data.get("thread") else set()
        else:
            shown = {e["node"]["id"] for e in read.data["threads"]["edges"]}
        for d in deletions:
            if d.thread not in shown or d.end >= read.start:
                continue
            if any(
                w.thread == d.thread
                and (w.kind == "run_async" or w.end > d.start)
                and w.start < read.end
                for w in writes
            ):
                continue
            problems.append((d.thread, f"deleted at {d.end}, shown by a read at {read.start}"))
    return problems


def overlaps(op: Op, other: Op) -> bool:
    """Whether two ops on a thread may have run at once (an async run never ends, here)."""
    end = op.end if op.kind != "run_async" else 1 << 62
    other_end = other.end if other.kind != "run_async" else 1 << 62
    return op.start < other_end and other.start < end


@pytest.mark.parametrize("seed", [int(x) for x in os.environ.get("CHAOS_SEEDS", "1 2 3").split()])
async def test_what_the_gateway_acknowledged_through_random_outages_is_in_postgres(
    chaos_server: tuple[Server, BlackHoleProxy],
    pg_database: str,
    seed: int,
) -> None:
    server, proxy = chaos_server
    world = World()
    async with httpx.AsyncClient(base_url=server.url, timeout=NO_ANSWER_AFTER) as http:
        clients = [asyncio.create_task(client_loop(http, world, c, seed)) for c in range(CLIENTS)]
        schedule = await chaos(proxy, seed, world)
        world.stop.set()
        await asyncio.gather(*clients)
        problems = await check(http, world, pg_database)
    story = {t: world.story(t) for t in {t for t, _ in problems if t}}
    found = f"seed {seed}, schedule {schedule}\n" + "\n".join(
        f"{p}\n{story.get(t, '')}" for t, p in problems
    )
    assert problems == [], found


async def check(http: httpx.AsyncClient, world: World, url: str) -> list[tuple[str | None, str]]:
    """Wait for the copy-back and every run's end; then audit PostgreSQL."""

    async def settled() -> bool:
        body = await http.post("/graphql", json={"query": HEALTH})
        health = body.json()["data"]["health"]
        return bool(health["status"] == "HEALTHY" and health["pendingSync"] == 0)

    await until(settled)

    async def ended() -> bool:
        unfinished = "SELECT count(*) FROM code_hero_runs WHERE status IN ('PENDING', 'RUNNING')"
        return bool(await rows(url, unfinished) == [(0,)])

    with contextlib.suppress(AssertionError):  # a run that never ends is reported below
        await until(ended, limit=10 * LEASE)
    await until(settled)
    health = (await http.post("/graphql", json={"query": HEALTH})).json()["data"]["health"]
    return await audit(world, url, health)


async def audit(world: World, url: str, health: dict[str, Any]) -> list[tuple[str | None, str]]:
    """What PostgreSQL holds against what the clients were told: (thread, problem)."""
    problems: list[tuple[str | None, str]] = []
    acked = [op for op in world.ops if op.acked]
    if not served_degraded(world):
        problems.append((None, "no request was served degraded: the faults missed"))
    problems += [(op.thread, f"{op.kind} answered {error}") for op, error in bad_errors(world.ops)]
    if health["quarantined"] or health["pendingSync"]:
        problems.append((None, f"left in the journal: {health}"))

    deleted = {op.thread: op for op in acked if op.kind == "delete" and op.thread}
    # A thread that an acknowledged write reached during or after its deletion may live
    # again; so may one a run held up by an outage reached: its UNAVAILABLE names the
    # run (runId), recorded (a startRun naming a deleted thread makes it anew).
    written = [o for o in world.ops if o.acked or any(held_up(e) for e in o.errors)]
    deleted = {
        t: d
        for t, d in deleted.items()
        if not any(
            o.thread == t and o.end > d.start and o.kind not in {"read", "delete"} for o in written
        )
    }
    for thread_id in deleted:
        for table in ("code_hero_threads", "checkpoints", "code_hero_runs", "code_hero_run_events"):
            found = await rows(url, f"SELECT count(*) FROM {table} WHERE thread_id = %s", thread_id)
            if found != [(0,)]:
                problems.append((thread_id, f"deleted thread is back in {table}: {found}"))
        if any(t == thread_id for t, _ in problems):
            back = await rows(
                url,
                "SELECT run_id, status, created_at FROM code_hero_runs WHERE thread_id = %s",
                thread_id,
            )
            problems.append((None, f"its runs: {back}"))

    for table in ("checkpoints", "code_hero_runs", "code_hero_run_events"):
        for (thread_id,) in await rows(
            url,
            f"SELECT DISTINCT thread_id FROM {table} WHERE thread_id NOT IN "
            "(SELECT thread_id FROM code_hero_threads)",
        ):
            problems.append((thread_id, f"{table} of a thread that does not exist"))
    for run_id, thread_id, status in await rows(
        url,
        "SELECT run_id, thread_id, status FROM code_hero_runs "
        "WHERE status IN ('PENDING', 'RUNNING')",
    ):
        problems.append((thread_id, f"run {run_id} stuck {status}"))
    for run_id, thread_id, count, top in await rows(
        url,
        "SELECT run_id, min(thread_id), count(*), max(seq) FROM code_hero_run_events "
        "GROUP BY run_id HAVING count(*) <> max(seq) OR min(seq) <> 1",
    ):
        problems.append((thread_id, f"run {run_id} has {count} events up to seq {top}"))

    # A run's stream ends with its end, and tells no other: a subscriber stops at the
    # first end it reads (one that read SUCCESS must not find the run CANCELLED).
    for run_id, thread_id, status, last_type, last_status, told in await rows(
        url,
        "SELECT r.run_id, r.thread_id, r.status, e.type, e.payload->>'status', "
        "ARRAY(SELECT DISTINCT payload->>'status' FROM code_hero_run_events "
        "      WHERE run_id = r.run_id AND type = 'status' "
        "      AND payload->>'status' NOT IN ('PENDING', 'RUNNING')) "
        "FROM code_hero_runs r LEFT JOIN code_hero_run_events e ON e.run_id = r.run_id "
        "AND e.seq = (SELECT max(seq) FROM code_hero_run_events WHERE run_id = r.run_id) "
        "WHERE r.status NOT IN ('PENDING', 'RUNNING')",
    ):
        if (last_type, last_status) != ("status", status) or told != [status]:
            problems.append(
                (
                    thread_id,
                    f"run {run_id} is {status}; its events end {last_type} "
                    f"{last_status} and told {told}",
                )
            )
    # The slow graph never fails by itself: a run ended ERROR is the outage's doing.
    for run_id, thread_id, error in await rows(
        url, "SELECT run_id, thread_id, error FROM code_hero_runs WHERE status = 'ERROR'"
    ):
        problems.append((thread_id, f"run {run_id} ended ERROR: {error}"))
    # A thread waits on unfinished runs only: BUSY without one refuses or queues for nothing.
    for (thread_id,) in await rows(
        url,
        "SELECT thread_id FROM code_hero_threads t WHERE status = 'BUSY' AND NOT EXISTS "
        "(SELECT 1 FROM code_hero_runs r WHERE r.thread_id = t.thread_id "
        "AND r.status IN ('PENDING', 'RUNNING'))",
    ):
        problems.append((thread_id, "thread BUSY with no unfinished run"))
    problems += resurrected_in_reads(world)

    runs = {
        run_id: (status, output)
        for run_id, status, output in await rows(
            url, "SELECT run_id, status, output FROM code_hero_runs"
        )
    }
    prunes = [op for op in world.ops if op.kind == "prune"]

    # A deletion that answered an error may have been applied in part, or whole.
    deletes = [op for op in world.ops if op.kind == "delete"]

    def erased(op: Op) -> bool:
        """Whether a deletion of op's thread may have removed what op wrote: one that
        ended after op began, or one cut short (it answered an error and left the row
        marked) that a run started on the thread later ended, as a startRun naming a
        marked thread does before it starts afresh (seed 458: a run cancelled between
        the two went with the thread)."""
        if any(d.thread == op.thread and d.end > op.start for d in deletes):
            return True
        for cut in (d for d in deletes if d.thread == op.thread and not d.acked):
            # The first run started on the thread after it: the one that may end its mark.
            ender = min(
                (
                    e
                    for e in world.ops
                    if e.thread == op.thread
                    and e.kind in {"run_wait", "run_async"}
                    and e.start > cut.start
                ),
                key=lambda e: e.start,
                default=None,
            )
            if ender is not None and op is not ender and op.start < ender.end:
                return True
        return False

    def pruned_after(op: Op) -> bool:
        """Whether a prune of op's thread may have removed what op wrote (or its run did)."""
        return any(p.thread == op.thread and p.end > op.start for p in prunes)

    options: Any = {"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row}
    async with await connect(url, **options) as conn:
        stock = AsyncPostgresSaver(conn)  # what AsyncPostgresSaver.from_conn_string makes

        async def history(thread_id: str) -> list[Any]:
            config: Any = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
            return [c async for c in stock.alist(config)]

        for op in acked:
            if erased(op) or op.kind not in {"run_wait", "run_async", "update", "cancel"}:
                continue
            assert op.data is not None
            if op.kind == "update":
                checkpoint = op.data["updateState"]
                if pruned_after(op):
                    continue
                config: Any = {
                    "configurable": {
                        "thread_id": op.thread,
                        "checkpoint_ns": "",
                        "checkpoint_id": checkpoint["id"],
                    }
                }
                stored = await stock.aget_tuple(config)
                if stored is None:
                    problems.append((op.thread, f"updateState {checkpoint['id']} lost"))
                elif stored.checkpoint["channel_values"].get("steps") != checkpoint["values"].get(
                    "steps"
                ):
                    problems.append((op.thread, f"updateState {checkpoint['id']} differs"))
                continue
            answered = op.data["startRun"] if op.kind != "cancel" else op.data["cancelRun"]
            run_id = answered["id"]
            if op.kind == "cancel":
                # An end a client was told is the end (a run ended before the cancel too).
                told = answered["status"]
                if told in FINISHED and run_id in runs and runs[run_id][0] != told:
                    problems.append((op.thread, f"run {run_id} answered {told}, is {runs[run_id]}"))
                elif told == "CANCELLED" and run_id not in runs:
                    problems.append((op.thread, f"cancelled run {run_id} is {runs.get(run_id)}"))
                continue
            if run_id not in runs:
                where = await rows(
                    url, "SELECT status FROM code_hero_threads WHERE thread_id = %s", op.thread
                )
                problems.append((op.thread, f"acknowledged run {run_id} lost (thread: {where})"))
                continue
            status, output = runs[run_id]
            if op.kind == "run_wait" and status != answered["status"]:
                problems.append((op.thread, f"run {run_id} answered {answered} but is {status}"))
            elif op.kind == "run_wait" and status == "SUCCESS" and output != answered["output"]:
                problems.append((op.thread, f"run {run_id} answered {answered}, stored {output}"))
            if status == "SUCCESS" and not pruned_after(op):
                mine = [
                    c
                    for c in await history(answered["threadId"])
                    if c.metadata.get("run_id") == run_id
                ]
                if not mine:
                    problems.append((op.thread, f"run {run_id} SUCCESS without checkpoints"))
                elif mine[0].checkpoint["channel_values"].get("steps") != output.get("steps"):
                    problems.append(
                        (op.thread, f"run {run_id}'s last checkpoint is not its output")
                    )

        # A thread whose last operation was an acknowledged write, alone on it: its latest.
        by_thread: dict[str, list[Op]] = {}
        for op in world.ops:
            if op.thread is not None and op.kind != "read":
                by_thread.setdefault(op.thread, []).append(op)
        for thread_id, ops in by_thread.items():
            last = max(ops, key=lambda o: o.start)
            if erased(last) or not last.acked or last.kind not in {"update", "run_wait"}:
                continue
            if any(o is not last and overlaps(o, last) for o in ops):
                continue
            assert last.data is not None
            latest = (await history(thread_id))[:1]
            if last.kind == "update":
                wanted = last.data["updateState"]["id"]
                if not latest or latest[0].checkpoint["id"] != wanted:
                    problems.append((thread_id, f"latest checkpoint is not the edit {wanted}"))
            elif last.data["startRun"]["status"] == "SUCCESS":
                wanted = last.data["startRun"]["id"]
                if not latest or latest[0].metadata.get("run_id") != wanted:
                    problems.append((thread_id, f"latest checkpoint is not run {wanted}'s"))
    return problems


# --- what the audit found, made deterministic ----------------------------------


@pytest.fixture
async def quiet_proxied(pg_database: str) -> AsyncIterator[tuple[Gateway, BlackHoleProxy]]:
    """A gateway behind the proxy whose probe never runs during a test: only a request's
    own failure tells it the database went away."""
    async with BlackHoleProxy("127.0.0.1", PG_PORT) as proxy:
        config = create_postgres_checkpointer(
            with_port(pg_database, proxy.port), pool_timeout=1, health_check_interval=600
        )
        settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_GRAPH})
        async with Gateway(settings) as gw:
            yield gw, proxy


async def cut_while_waiting_on(
    url: str, proxy: BlackHoleProxy, table: str, call: Awaitable[object]
) -> BaseException | None:
    """Run `call` with `table` locked, cut the connections once it waits for the lock
    (its earlier statements went through), and return what it raised."""
    with psycopg.connect(url) as locker:
        locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        task = asyncio.ensure_future(call)

        async def waiting() -> bool:
            found = await rows(
                url,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> %s",
                locker.info.backend_pid,
            )
            return bool(found[0][0]) or task.done()

        await until(waiting)
        proxy.refuse()
        locker.rollback()
    try:
        await task
    except BaseException as exc:
        return exc
    return None


@pytest.mark.parametrize(
    ("table", "operation"),
    [
        ("checkpoints", "pruneThreads keepLatest"),
        ("code_hero_threads", "prune keep_latest"),
        ("code_hero_threads", "manager prune older_than"),
    ],
)
async def test_an_outage_that_starts_inside_a_primary_only_call_answers_unavailable(
    quiet_proxied: tuple[Gateway, BlackHoleProxy], pg_database: str, table: str, operation: str
) -> None:
    # Found by seed 1: pruneThreads answered INTERNAL (psycopg's OperationalError
    # unmapped) when the connection died during its DELETE. These calls use the
    # primary's backend directly; they must fail over like every other call.
    gw, proxy = quiet_proxied
    await gw.start_run(StartRun(graph="slow", input={}, config={"delay": 0}, wait=True))
    calls = {
        "pruneThreads keepLatest": lambda: gw.prune_threads(None, keep_latest=1, caller=ANONYMOUS),
        "prune keep_latest": lambda: gw.prune(keep_latest=1, caller=ANONYMOUS),
        "manager prune older_than": lambda: gw.manager.prune(older_than=datetime.now(UTC)),
    }
    raised = await cut_while_waiting_on(pg_database, proxy, table, calls[operation]())
    assert isinstance(raised, BackendUnavailableError), repr(raised)
    assert raised.code == "UNAVAILABLE" and raised.retry_after >= 1
    assert gw.manager.overall_status == "degraded"


async def test_a_notification_lost_after_a_run_was_admitted_does_not_fail_the_request(
    quiet_proxied: tuple[Gateway, BlackHoleProxy],
) -> None:
    # Found by seed 2: startRun answered INTERNAL for a run it had admitted (it ran,
    # and a client's retry would start a second one) when the connection died between
    # the admission's commit and its NOTIFY. The rows are the truth; a lost wake-up
    # only delays other replicas, and this process is told at once.
    gw, proxy = quiet_proxied
    heard: list[str] = []
    gw.bus.on_control(heard.append)
    event = EventRecord("r", "t", 1, "metadata", {}, datetime.now(UTC))
    proxy.refuse()  # the bus still believes the database serves: nothing failed over yet
    await gw.bus.stored([event], control="runs")
    assert heard == ["runs"]
