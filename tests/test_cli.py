"""The `code-hero` command, run as a real process against SQLite and PostgreSQL (its
many bad-argument cases call `main` in the test's process: `cli_here`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import logging
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import uvicorn

from code_hero.cli import main
from code_hero.cli.serve import GC_THRESHOLD
from code_hero.config import (
    CheckpointerConfig,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)

BIN = shutil.which("code-hero", path=str(Path(sys.executable).parent))
COMMAND = [BIN] if BIN else [sys.executable, "-m", "code_hero.cli"]
CODING = "Write a python function to add numbers"
SLOW_GRAPH = Path(__file__).parent / "runs" / "slow_graph.py"


def _env() -> dict[str, str]:
    """The environment without any storage or graph settings of the caller's."""
    drop = ("DATABASE_URL", "POSTGRES_URL", "SQLITE_PATH", "DEV_USE_SQLITE", "CODE_HERO_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code-hero ARGS`; no run of it may ever print a traceback."""
    done = subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=60, env=_env(), cwd=cwd
    )
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return done


def cli_here(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`cli(ARGS)` in this process: `main` as the console script calls it, its exit code
    and output. For the many bad-argument cases (a process start-up each, ~1.2 s of CPU
    for those that open the store); `test_a_process_exits_with_mains_code` checks that a
    real process ends as `main` does."""
    out, err = io.StringIO(), io.StringIO()
    disabled = logging.root.manager.disable  # `main` silences logging for its command
    here = os.getcwd()
    with (
        mock.patch.dict(os.environ, _env(), clear=True),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            if cwd is not None:
                os.chdir(cwd)
            code = main(list(args))
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code if isinstance(exit.code, int) else 1
        finally:
            os.chdir(here)
            logging.disable(disabled)
    done = subprocess.CompletedProcess(["code-hero", *args], code, out.getvalue(), err.getvalue())
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return done


def seed(*args: str) -> tuple[int, str]:
    """`code-hero run ARGS` in this process, to set a test's store up: its exit code and
    output. What a run prints is `test_run_*`'s to check in a real process; the tests
    that only need threads to look at save a process start-up (~1.2 s CPU) per run."""
    done = cli_here("run", *args)
    return done.returncode, done.stdout


def thread_ids(*storage: str) -> list[str]:
    done = cli("threads", "list", "--json", *storage)
    assert done.returncode == 0, done.stderr
    return [t["thread_id"] for t in json.loads(done.stdout)["threads"]]


def started_thread(output: str) -> str:
    """The thread id from the `[run] RUN on thread THREAD (graph G)` line."""
    first = next(line for line in output.splitlines() if line.startswith("[run] "))
    return first.split(" on thread ")[1].split()[0]


@pytest.fixture
def db(tmp_path: Path) -> list[str]:
    """Storage options naming a fresh SQLite file."""
    return ["--sqlite-path", str(tmp_path / "store.sqlite")]


# ------------------------------------------------------------------ run
def test_run_streams_transitions_and_the_answer_then_success(db: list[str]) -> None:
    done = cli("run", CODING, *db)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "[transition] SUPERVISOR -> IMPLEMENTATION: " in done.stdout
    assert "[transition] IMPLEMENTATION -> CODE_GENERATOR: " in done.stdout
    assert "def add_numbers(" in done.stdout  # the answer, streamed as deltas
    assert lines[-1] == "[status] SUCCESS"
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(p))
        for p in (
            "[transition] SUPERVISOR",
            "[transition] IMPLEMENTATION",
            "CODE_GENERATOR:",
            "[status]",
        )
    ]
    assert order == sorted(order)
    assert thread_ids(*db) == [started_thread(done.stdout)]


def test_an_interrupted_run_says_how_to_resume_and_resume_finishes_it(db: list[str]) -> None:
    asked = cli("run", "hello", "--approve", "--user", "ada", *db)
    assert asked.returncode == 3, asked.stderr
    thread = started_thread(asked.stdout)
    assert "[interrupt] Hand this request to the research team's lead RESEARCH" in asked.stdout
    assert "[status] INTERRUPTED" in asked.stdout
    assert f"code-hero run --thread {thread} --sqlite-path {db[1]} --resume yes" in asked.stdout

    resumed = cli("run", "--thread", thread, "--resume", "yes", *db)
    assert resumed.returncode == 0, resumed.stderr
    assert "[transition] SUPERVISOR -> RESEARCH" in resumed.stdout
    assert resumed.stdout.splitlines()[-1] == "[status] SUCCESS"

    again = cli("run", "--thread", thread, "--resume", "yes", *db)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and "not interrupted" in again.stderr


def test_a_failing_run_exits_1(db: list[str], tmp_path: Path) -> None:
    graph = tmp_path / "broken.py"
    graph.write_text(
        "from langgraph.graph import START, MessagesState, StateGraph\n"
        "def boom(state):\n"
        "    raise RuntimeError('broken on purpose')\n"
        "graph = StateGraph(MessagesState)\n"
        "graph.add_node('boom', boom)\n"
        "graph.add_edge(START, 'boom')\n"
    )
    done = cli("run", "hi", "--graphs", f"broken={graph}:graph", "--graph", "broken", *db)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == "[status] ERROR: RuntimeError: broken on purpose"


def test_run_on_a_terminal_shows_a_live_display(db: list[str]) -> None:
    leader, follower = pty.openpty()
    env = {**_env(), "TERM": "xterm-256color", "COLUMNS": "100"}
    proc = subprocess.Popen(
        [*COMMAND, "run", CODING, *db],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(follower)
    screen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    _, errors = proc.communicate(timeout=30)  # closes the stderr pipe too
    assert proc.returncode == 0, errors
    text = screen.decode(errors="replace")
    assert "\x1b[" in text  # rendered by rich, not plain lines
    assert "[transition]" not in text
    assert "SUPERVISOR -> IMPLEMENTATION" in text and "SUCCESS" in text


# ------------------------------------------------------------------ threads, health, prune
def test_threads_list_and_delete(db: list[str]) -> None:
    first = started_thread(seed(CODING, *db)[1])
    second = started_thread(seed("hello", "--approve", "--user", "ada", *db)[1])

    listing = cli("threads", "list", *db)
    assert listing.returncode == 0
    rows = listing.stdout.splitlines()
    assert rows[0].split() == ["THREAD", "STATUS", "UPDATED", "USER"]
    assert rows[1].split()[:2] == [second, "INTERRUPTED"] and rows[1].split()[-1] == "ada"
    assert rows[2].split()[:2] == [first, "IDLE"]
    assert thread_ids("--user", "ada", *db) == [second]
    assert thread_ids("--status", "idle", *db) == [first]
    page = json.loads(cli("threads", "list", "--json", "--first", "1", *db).stdout)
    assert page["has_next_page"] and [t["thread_id"] for t in page["threads"]] == [second]
    assert thread_ids("--after", page["end_cursor"], *db) == [first]

    gone = cli("threads", "delete", first, *db)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.startswith(f"deleted thread {first}: ") and " 1 runs" in gone.stdout
    assert int(gone.stdout.split(": ")[1].split()[0]) > 0  # checkpoints
    assert thread_ids(*db) == [second]
    again = cli("threads", "delete", first, *db)
    assert (again.returncode, again.stderr) == (1, f"error: no thread '{first}'\n")


def test_health_exit_codes(db: list[str]) -> None:
    assert seed(CODING, *db)[0] == 0
    healthy = cli("health", *db)
    assert healthy.returncode == 0 and healthy.stdout.startswith("status: healthy")
    report = json.loads(cli("health", "--json", *db).stdout)
    assert report["overall_status"] == "healthy" and report["active_backend"] == "primary"

    down = cli("health", "--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert down.returncode == 1
    assert down.stdout.startswith("status: degraded") and "Connection refused" in down.stdout


def test_prune(db: list[str]) -> None:
    thread = started_thread(seed(CODING, *db)[1])
    kept = cli("prune", "--keep-latest", "1", *db)
    assert kept.returncode == 0, kept.stderr
    trimmed = re.fullmatch(r"pruned 0 threads, (\d+) checkpoints, 0 runs\n", kept.stdout)
    assert trimmed and int(trimmed.group(1)) > 0
    assert thread_ids(*db) == [thread]
    assert (
        cli("prune", "--older-than", "1d", *db).stdout
        == "pruned 0 threads, 0 checkpoints, 0 runs\n"
    )
    old = cli("prune", "--older-than", "0s", *db)
    assert old.stdout.startswith("pruned 1 threads, ") and old.stdout.endswith(" 1 runs\n")
    assert thread_ids(*db) == []


# ------------------------------------------------------------------ deletes stop runs
@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[CheckpointerConfig, list[str]]:
    """A store that a server in the test and the CLI share: its config, the CLI's options."""
    if request.param == "sqlite":
        path = str(tmp_path / "shared.sqlite")
        return create_sqlite_checkpointer(path), ["--sqlite-path", path]
    url = request.getfixturevalue("pg_database")
    return create_postgres_checkpointer(url), ["--database-url", url]


async def cut_short(shared: tuple[CheckpointerConfig, list[str]], *command: str) -> str:
    """Run `code-hero COMMAND` while a server executes a slow run; it must end CANCELLED.

    `{thread}` in the command stands for the run's thread. Returns the CLI's stdout.
    """
    from code_hero.gateway import Gateway, GatewaySettings
    from code_hero.persistence.records import EventRecord, RunStatus
    from code_hero.runs.events import terminal_status
    from code_hero.runs.executor import StartRun
    from tests.runs.conftest import SLOW_SPEC

    config, storage = shared
    # A short lease: on SQLite the cancel reaches the server at its next renewal.
    settings = GatewaySettings(checkpointer=config, graphs={"slow": SLOW_SPEC}, lease_seconds=3)
    async with Gateway(settings) as server:
        run = await server.start_run(StartRun(graph="slow", input={"delay": 5.0}))
        running = asyncio.Event()

        async def follow() -> list[EventRecord]:
            seen = []
            async for event in await server.follow_run(run.run_id):
                seen.append(event)
                if event.payload.get("status") == RunStatus.RUNNING.value:
                    running.set()
            return seen

        events = asyncio.create_task(follow())
        await running.wait()
        args = [a.format(thread=run.thread_id) for a in command]
        done = await asyncio.to_thread(cli, *args, *storage)
        assert done.returncode == 0, done.stderr
        assert not server.executor.is_active(run.run_id)  # stopped before the purge
        seen = await events
        assert terminal_status(seen[-1]) is RunStatus.CANCELLED, seen[-1]
        assert await server.get_thread(run.thread_id) is None
    return done.stdout


async def test_threads_delete_cancels_the_threads_run_first(
    shared: tuple[CheckpointerConfig, list[str]],
) -> None:
    """As deleteThread does: the run executing elsewhere ends CANCELLED, then all goes."""
    out = await cut_short(shared, "threads", "delete", "{thread}")
    assert out.startswith("deleted thread ") and out.endswith(" 1 runs\n")


async def test_prune_cancels_the_runs_of_the_threads_it_deletes(
    shared: tuple[CheckpointerConfig, list[str]],
) -> None:
    # Not --older-than 0s: the CLI takes its "now" as it starts, and on a loaded machine
    # the run's next step updated the thread before the CLI asked, which kept it.
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    out = await cut_short(shared, "prune", "--before", later)
    assert out.startswith("pruned 1 threads, ") and out.endswith(" 1 runs\n")


# ------------------------------------------------------------------ PostgreSQL
@pytest.mark.postgres
def test_run_and_threads_on_postgres(pg_database: str) -> None:
    done = cli("run", CODING, "--database-url", pg_database)
    assert done.returncode == 0, done.stderr
    assert "[transition] SUPERVISOR -> IMPLEMENTATION" in done.stdout
    assert thread_ids("--database-url", pg_database) == [started_thread(done.stdout)]


@pytest.mark.postgres
def test_migrate_sqlite_to_postgres(db: list[str], pg_database: str) -> None:
    threads = [started_thread(seed(m, *db)[1]) for m in (CODING, "hello")]
    copied = cli("migrate", "--from", f"sqlite:///{db[1]}", "--to", pg_database)
    assert copied.returncode == 0, copied.stderr
    lines = copied.stdout.splitlines()
    assert lines[1:3] == [f"[1/2] {min(threads)}", f"[2/2] {max(threads)}"]
    said = re.fullmatch(
        r"copied 2 threads, \d+ checkpoints, \d+ writes, 2 runs, (\d+) events \((\d+) appended\)",
        lines[-1],
    )
    assert said is not None and said[1] == said[2] != "0", lines[-1]
    # Again: the same counts, the events there already (it said "0 events").
    again = cli("migrate", "--from", f"sqlite:///{db[1]}", "--to", pg_database)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1] == lines[-1].replace(
        f"({said[2]} appended)", "(0 appended)"
    )
    assert sorted(thread_ids("--database-url", pg_database)) == sorted(threads)
    pg = cli("threads", "delete", threads[0], "--database-url", pg_database)
    assert pg.returncode == 0 and " 1 runs" in pg.stdout


@pytest.mark.postgres
async def test_run_executes_only_its_own_run(pg_database: str) -> None:
    """A server's PENDING run on the same database is not the CLI's to claim."""
    from code_hero.config import create_postgres_checkpointer
    from code_hero.gateway import Gateway, GatewaySettings
    from code_hero.persistence.records import RunStatus
    from code_hero.runs.executor import StartRun

    # A serve-only server (no slots): its run waits for a replica with room.
    settings = GatewaySettings(
        checkpointer=create_postgres_checkpointer(pg_database), max_concurrent_runs=0
    )
    async with Gateway(settings) as server:
        queued = await server.start_run(StartRun(message="hello"))
        done = await asyncio.to_thread(cli, "run", CODING, "--database-url", pg_database)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "[status] SUCCESS"
        own = done.stdout.splitlines()[0].split()[1]
        assert own != queued.run_id
        after = await server.get_run(queued.run_id)
        assert after is not None
        assert after.status is RunStatus.PENDING and after.lease_owner is None, after
        assert after.started_at is None


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "args",
    [
        [],
        ["run"],
        ["run", "hi", "--resume", "yes", "--thread", "t"],
        ["run", "--resume", "yes"],
        ["threads", "list", "--first", "500"],
        ["threads", "list", "--status", "sleeping"],
        ["prune"],
        ["prune", "--older-than", "3 fortnights"],
        ["prune", "--older-than", "1d", "--before", "2024-01-01"],
        ["migrate", "--from", "a.sqlite"],
        ["serve", "--port", "http"],
        ["run", "hi", "--thread", "a b"],
        ["run", "--thread", "x" * 129, "--resume", "yes"],
        ["threads", "delete", "a/b"],
        ["threads", "delete", ""],
        ["frobnicate"],
        ["prune", "--older-than", "99999999999d"],  # timedelta's OverflowError: a traceback
        ["prune", "--older-than", "3000000d"],  # now - 8,200 years: exit 1 (OverflowError)
        ["prune", "--before", "0001-01-01T00:00:00+23:00"],  # before year 1 in UTC: exit 1
    ],
)
def test_bad_arguments_print_usage_and_exit_2(args: list[str]) -> None:
    done = cli_here(*args)
    assert done.returncode == 2
    # The usage shown is the subcommand's, for the rules argparse states and ours alike.
    command = next((a for a in args if a in {"run", "prune", "migrate", "serve"}), "")
    assert done.stderr.startswith(f"usage: code-hero {command}".rstrip())
    assert "error: " in done.stderr


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (["run", "hi", "--thread", "has space"], "--thread"),
        (["threads", "delete", "x" * 10_000], "ID"),
    ],
)
def test_a_malformed_thread_id_is_a_bad_argument(
    args: list[str], argument: str, db: list[str]
) -> None:
    done = cli(*args, *db)
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        f"error: argument {argument}: a thread id must be 1-128 characters of A-Z a-z 0-9 . _ : -"
    )
    assert not Path(db[1]).exists()  # refused before the store was opened


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "hi", "--graph", "nope"], "error: unknown graph 'nope'; known graphs: code_hero"),
        (
            ["run", "hi", "--database-url", "postgresql://nobody@127.0.0.1:1/none"],
            "error: cannot open postgresql://nobody@127.0.0.1:1/none: ",
        ),
        (
            ["threads", "list", "--database-url", "mysql://x/y"],
            "error: --database-url: cannot tell the backend",
        ),
        (
            ["threads", "list", "--database-url", "postgresql://u@h/db?nosuchparam=1"],
            "error: --database-url: not a PostgreSQL URL libpq can read",
        ),
        (  # libpq parses these and refuses them at every connection: a lasting outage
            ["threads", "list", "--database-url", "postgresql://u@127.0.0.1:99999/db"],
            "error: --database-url: not a PostgreSQL URL libpq can read: the port '99999'",
        ),
        (
            ["threads", "list", "--database-url", "postgresql://u@h1,h2:0/db"],
            "error: --database-url: not a PostgreSQL URL libpq can read: the port '0'",
        ),
        (
            ["threads", "list", "--database-url", "postgresql://u@h/db?sslmode=yes"],
            "error: --database-url: not a PostgreSQL URL libpq can read: sslmode 'yes'",
        ),
        (
            ["migrate", "--from", "memory://", "--to", "postgresql://u:50%off@h/db"],
            "error: --to: the password in the PostgreSQL URL is not URL-encoded",
        ),
        (
            ["migrate", "--from", "memory://", "--to", "postgresql://u:pa/ss@127.0.0.1:1/db"],
            "error: --to: the password in the PostgreSQL URL is not URL-encoded",
        ),
        (["threads", "list", "--sqlite-path", "missing.sqlite"], "error: no SQLite database at"),
        (
            ["migrate", "--from", "memory://", "--to", "sqlite:///x.sqlite?mode=rwc"],
            "error: --to: SQLite URL 'sqlite:///x.sqlite?mode=rwc' has a query string",
        ),
        (  # migrate has no --sqlite-path: the hint names what --from takes
            ["migrate", "--from", "missing", "--to", "memory://"],
            "error: no SQLite database at missing: nothing is stored there yet (--from takes",
        ),
        (
            ["migrate", "--from", "postgresql://nobody@127.0.0.1:1/none", "--to", "memory://"],
            "error: ",
        ),
    ],
)
def test_errors_are_one_line_and_exit_1(args: list[str], message: str, tmp_path: Path) -> None:
    done = cli_here(*args, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(message)
    assert done.stderr.count("\n") == 1


def test_a_process_exits_with_mains_code(tmp_path: Path) -> None:
    # The cases above run `main` in the test's process; the console script exits with
    # what it returns, and argparse's exit is the process's too.
    usage = cli("prune", cwd=tmp_path)
    assert usage.returncode == 2 and usage.stderr.startswith("usage: code-hero prune")
    error = cli("threads", "list", "--sqlite-path", "missing.sqlite", cwd=tmp_path)
    assert (error.returncode, error.stdout) == (1, "")
    assert error.stderr.startswith("error: no SQLite database at") and error.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "to",
    ["sqlite:///sub/../x.sqlite", "sqlite:///./x.sqlite", ".//x.sqlite", "sqlite:///link.sqlite"],
)
def test_migrate_refuses_one_file_written_two_ways(to: str, tmp_path: Path) -> None:
    (tmp_path / "x.sqlite").touch()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.sqlite").symlink_to(tmp_path / "x.sqlite")
    done = cli("migrate", "--from", str(tmp_path / "x.sqlite"), "--to", to, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (1, "error: --from and --to name the same store\n")


@pytest.mark.parametrize("password", ["zq#xv", "zq?xv", "zq%2Fxv"])
def test_a_password_is_never_printed(password: str, tmp_path: Path) -> None:
    # libpq reads # and ? as the password's own; an RFC 3986 parser ends it there.
    url = f"postgresql://u:{password}@127.0.0.1:1/db"
    done = cli("migrate", "--from", url, "--to", "memory://", cwd=tmp_path)
    assert "copying postgresql://u:***@127.0.0.1:1/db -> memory://" in done.stdout
    assert "zq" not in done.stdout + done.stderr and "xv" not in done.stdout + done.stderr


# ------------------------------------------------------------------ serve
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Serve = Callable[..., tuple[subprocess.Popen[str], str]]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """A factory of `code-hero serve` processes; each is killed if a test leaves it running."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, **env: str) -> tuple[subprocess.Popen[str], str]:
        port = _free_port()
        proc = subprocess.Popen(
            [*COMMAND, "serve", "--port", str(port), "--log-level", "warning", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**_env(), **env},
            cwd=tmp_path,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=1) as client:  # one for the polls (each client costs ~20 ms)
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    pytest.fail(f"serve exited with {proc.returncode}: {proc.stderr.read()}")
                try:
                    if client.get(f"{url}/healthz").status_code == 200:
                        return proc, url
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        pytest.fail("serve did not answer /healthz within 30 s")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes its pipes


def graphql(url: str, query: str) -> dict[str, object]:
    response = httpx.post(f"{url}/graphql", json={"query": query}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    data: dict[str, object] = body["data"]
    return data


def test_serve_answers_finishes_runs_on_sigterm_and_keeps_its_data(
    serve: Serve, db: list[str]
) -> None:
    graphs = ["--graphs", f"slow={SLOW_GRAPH}:graph"]
    proc, url = serve(*db, *graphs)
    assert graphql(url, "{ health { status } }") == {"health": {"status": "HEALTHY"}}
    started = graphql(
        url, 'mutation { startRun(input: {graph: "slow", input: {delay: 0.2}}) { id threadId } }'
    )["startRun"]
    run, thread = started["id"], started["threadId"]  # type: ignore[index]

    proc.send_signal(signal.SIGTERM)  # mid-run: the run gets its grace period to finish
    assert proc.wait(timeout=15) == 0
    assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]

    proc, url = serve(*db, *graphs)
    listed = graphql(url, "{ threads { edges { node { id } } } }")
    assert listed == {"threads": {"edges": [{"node": {"id": thread}}]}}
    assert graphql(url, f'{{ run(id: "{run}") {{ status }} }}') == {"run": {"status": "SUCCESS"}}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_sigterm_ends_open_sse_subscriptions_and_stops(serve: Serve, tmp_path: Path) -> None:
    """An SSE subscription that would never end by itself (`threadEvents`) held uvicorn's
    "Waiting for connections to close" forever: the lifespan never ran (no drain, no
    copy-back of an outage), until an orchestrator's SIGKILL. Now a SIGTERM ends every
    SSE stream (a cut: the body ends with no `complete`, so a client resumes) and exits."""
    proc, url = serve("--sqlite-path", str(tmp_path / "sse.sqlite"))
    thread = graphql(url, "mutation { createThread(input: {}) { id } }")["createThread"]
    query = "subscription($t: ID!) { threadEvents(threadId: $t) { seq } }"
    body = {"query": query, "variables": {"t": thread["id"]}}  # type: ignore[index]
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{url}/graphql", json=body, headers={"accept": "text/event-stream"}
        ) as stream,
    ):
        assert stream.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        told = stream.read().decode()
    assert "event: complete" not in told
    assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]


def _running_run(url: str, thread_id: str) -> str:
    """The id of the thread's run once it is RUNNING (in its first step)."""
    running = (
        f'{{ runs(filter: {{threadId: "{thread_id}", status: RUNNING}}) '
        "{ edges { node { id } } } }"
    )
    edges: list[dict[str, dict[str, str]]] = []
    while not edges:
        time.sleep(0.05)
        edges = graphql(url, running)["runs"]["edges"]  # type: ignore[index]
    return edges[0]["node"]["id"]


def test_sigterm_answers_a_waiting_start_run_and_stops(serve: Serve, db: list[str]) -> None:
    """A `startRun(wait: true)` over HTTP held uvicorn's "Waiting for connections to
    close" until its run ended (a long run: past an orchestrator's SIGKILL), with the
    lifespan's drain and copy-back not begun. Now a SIGTERM answers it at once,
    UNAVAILABLE naming the run (`runId`, `retryAfter`), and the run is drained (a grace
    of 1 s, then its lease released) and resumable."""
    graphs = ["--graphs", f"slow={SLOW_GRAPH}:graph"]
    proc, url = serve(*db, *graphs, CODE_HERO_SHUTDOWN_GRACE="1")
    thread = graphql(url, "mutation { createThread(input: {}) { id } }")["createThread"]
    thread_id = thread["id"]  # type: ignore[index]
    start = (
        "mutation($t: ID!) { startRun(input: "
        '{threadId: $t, graph: "slow", input: {delay: 10}, wait: true}) { id status } }'
    )
    answers: list[httpx.Response | httpx.TransportError] = []

    def start_and_wait() -> None:
        body = {"query": start, "variables": {"t": thread_id}}
        try:
            answers.append(httpx.post(f"{url}/graphql", json=body, timeout=120))
        except httpx.TransportError as exc:  # the server killed without answering
            answers.append(exc)

    waiting = threading.Thread(target=start_and_wait, daemon=True)
    waiting.start()
    run_id = _running_run(url, thread_id)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    waiting.join()
    assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    (answer,) = answers
    assert isinstance(answer, httpx.Response), answer
    assert answer.status_code == 200, answer.text
    (error,) = answer.json()["errors"]
    assert error["extensions"]["code"] == "UNAVAILABLE"
    assert error["extensions"]["runId"] == run_id
    assert error["extensions"]["retryAfter"] >= 1
    assert "stopping" in error["message"]

    proc, url = serve(*db, *graphs)  # released, not failed: another server takes it up
    ran = graphql(url, f'{{ run(id: "{run_id}") {{ status }} }}')["run"]
    assert ran["status"] in ("PENDING", "RUNNING")  # type: ignore[index]


def test_sigterm_answers_a_waiting_start_run_on_a_websocket_before_closing_it(
    serve: Serve, db: list[str]
) -> None:
    """A `startRun(wait: true)` over a WebSocket got no answer at a SIGTERM: uvicorn
    closed the socket with 1012 at once, before the stop's answer could be sent, and
    the client never learnt its run. Now it is answered first (UNAVAILABLE naming the
    run, then `complete`), then the socket is closed with 1012, and serve exits. (The
    legacy graphql-ws protocol takes no mutations.)"""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect
    from websockets.typing import Subprotocol

    graphs = ["--graphs", f"slow={SLOW_GRAPH}:graph"]
    proc, url = serve(*db, *graphs, CODE_HERO_SHUTDOWN_GRACE="1")
    thread = graphql(url, "mutation { createThread(input: {}) { id } }")["createThread"]
    thread_id = thread["id"]  # type: ignore[index]
    start = (
        "mutation($t: ID!) { startRun(input: "
        '{threadId: $t, graph: "slow", input: {delay: 10}, wait: true}) { id status } }'
    )
    ws_url = url.replace("http://", "ws://") + "/graphql"
    with connect(ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]) as ws:
        ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
        ws.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": start, "variables": {"t": thread_id}},
                }
            )
        )
        run_id = _running_run(url, thread_id)

        proc.send_signal(signal.SIGTERM)
        received: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(json.loads(ws.recv(timeout=30)))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert proc.wait(timeout=15) == 0
    assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    answer, complete = received
    assert answer["type"] == "next" and answer["id"] == "1", received
    (error,) = answer["payload"]["errors"]
    assert error["extensions"]["code"] == "UNAVAILABLE"
    assert error["extensions"]["runId"] == run_id
    assert error["extensions"]["retryAfter"] >= 1
    assert "stopping" in error["message"]
    assert complete == {"id": "1", "type": "complete"}


def test_sigterm_answers_a_websocket_start_run_still_admitting_its_run(
    serve: Serve, db: list[str], tmp_path: Path
) -> None:
    """A `startRun(wait: true)` over a WebSocket still being admitted (here held in the
    auth hook's run.create) when SIGTERM comes was not among the stop's waits: uvicorn
    closed the socket (1012) before the start reached its wait, and the client never
    learnt its run. Now the stop follows it from its first step: it is answered
    (UNAVAILABLE naming its run, then `complete`) before the close."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect
    from websockets.typing import Subprotocol

    entered, release = tmp_path / "entered", tmp_path / "release"
    (tmp_path / "stophook.py").write_text(
        "import asyncio, pathlib\n"
        f"ENTERED, RELEASE = pathlib.Path({str(entered)!r}), pathlib.Path({str(release)!r})\n"
        "async def hook(request):\n"
        "    if request.action == 'run.create':\n"
        "        ENTERED.touch()\n"
        "        while not RELEASE.exists():\n"
        "            await asyncio.sleep(0.01)\n"
        "    return True\n"
    )
    pythonpath = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    graphs = ["--graphs", f"slow={SLOW_GRAPH}:graph"]
    proc, url = serve(
        *db,
        *graphs,
        CODE_HERO_SHUTDOWN_GRACE="1",
        CODE_HERO_AUTH_HOOK="stophook:hook",
        PYTHONPATH=pythonpath,
    )
    port = int(url.rsplit(":", 1)[1])
    start = 'mutation { startRun(input: {graph: "slow", input: {delay: 10}, wait: true}) { id } }'
    ws_url = url.replace("http://", "ws://") + "/graphql"
    with connect(ws_url, subprotocols=[Subprotocol("graphql-transport-ws")]) as ws:
        ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "connection_ack"
        ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": start}}))
        while not entered.exists():  # the start is being admitted, not yet waiting
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        while True:  # until serve stops listening: its stop has begun
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                break
            time.sleep(0.01)
        release.touch()  # the start goes on to its wait, answered at once
        received: list[dict[str, Any]] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(json.loads(ws.recv(timeout=30)))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    assert proc.wait(timeout=15) == 0
    assert [m["type"] for m in received] == ["next", "complete"], received
    (error,) = received[0]["payload"]["errors"]
    assert error["extensions"]["code"] == "UNAVAILABLE" and error["extensions"]["runId"]


def test_serve_uses_checkpoints_sqlite_in_the_working_directory_by_default(
    serve: Serve, tmp_path: Path
) -> None:
    proc, url = serve()
    assert graphql(url, "{ health { status } }") == {"health": {"status": "HEALTHY"}}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert (tmp_path / "checkpoints.sqlite").exists()


def test_the_parsers_copy_of_statuses_is_current() -> None:
    from code_hero import cli
    from code_hero.persistence.records import ThreadStatus

    assert cli.THREAD_STATUSES == tuple(s.value for s in ThreadStatus)


@pytest.mark.parametrize(
    ("option", "environment", "told"),
    [
        (["--graphs", "bad=no_such_module:graph"], {}, "graph 'bad' (no_such_module:graph)"),
        ([], {"CODE_HERO_MODEL": "nope:model"}, "Model 'nope:model'"),
        ([], {"CODE_HERO_DEFAULT_GRAPH": "nope"}, "default graph 'nope' is not loaded"),
    ],
)
def test_serve_exits_1_when_the_app_cannot_start(
    tmp_path: Path, option: list[str], environment: dict[str, str], told: str
) -> None:
    # These fail in the app's lifespan, under uvicorn: told in one `error:` line as
    # `code-hero run` tells them, with no traceback in the log above it.
    done = subprocess.run(
        [*COMMAND, "serve", "--port", str(_free_port()), *option],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), **environment},
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("error: ") and told in last, done.stderr
    assert sum(told in line for line in done.stderr.splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DATABASE_URL", "postgresql://u:50%off@127.0.0.1:1/db"),
        ("POSTGRES_URL", "postgresql://u:secret@127.0.0.1:1/db?nosuchparam=1"),
        ("CODE_HERO_DATABASE_URL", "postgresql://u:secret@127.0.0.1:1/db?nosuchparam=1"),
        # libpq would read host u, port off, database secret@127.0.0.1:1/db
        ("DATABASE_URL", "postgresql://u:off/secret@127.0.0.1:1/db"),
    ],
)
def test_a_postgres_url_libpq_cannot_read_stops_serve_with_one_line(
    tmp_path: Path, variable: str, url: str
) -> None:
    # Not a server that starts on its fallback and stays there, warning: the setting is
    # refused, named, and its password kept out of the message.
    done = subprocess.run(
        [*COMMAND, "serve", "--port", str(_free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), variable: url},
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {variable}: ") and done.stderr.count("\n") == 1
    assert "secret" not in done.stderr and "off" not in done.stderr


def test_a_graph_that_cannot_be_loaded_stops_serve_with_one_line(tmp_path: Path) -> None:
    # Like `--graphs garbage` ("error: graph spec 'garbage' is not ..."): a module that
    # cannot be imported is the operator's mistake, told in one line, not a traceback.
    port = str(_free_port())
    done = cli("serve", "--port", port, "--graphs", "bad=no_such_module:graph", cwd=tmp_path)
    assert done.returncode == 1
    assert "error: graph 'bad'" in done.stderr and "no_such_module" in done.stderr


def test_an_open_gateway_listens_on_loopback_only(serve: Serve, tmp_path: Path) -> None:
    store = ["--sqlite-path", str(tmp_path / "open.sqlite")]
    port = str(_free_port())
    refused = cli("serve", "--host", "0.0.0.0", "--port", port, *store)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: refusing to serve 0.0.0.0 without authentication")
    assert "--allow-anonymous" in refused.stderr and refused.stderr.count("\n") == 1

    proc, url = serve("--host", "0.0.0.0", "--allow-anonymous", *store)
    assert graphql(url, "{ graphs { name } }")  # open: no credentials needed
    proc.send_signal(signal.SIGTERM)
    _, log = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "NO AUTHENTICATION on 0.0.0.0" in log

    keys = tmp_path / "keys"
    keys.write_text("# one per line\nann-0123456789abcdef=ann\n")
    proc, url = serve("--host", "0.0.0.0", *store, CODE_HERO_API_KEYS_FILE=str(keys))
    query = {"query": "{ threads { edges { node { id } } } }"}
    assert httpx.post(f"{url}/graphql", json=query, timeout=30).status_code == 401
    allowed = httpx.post(
        f"{url}/graphql",
        json=query,
        headers={"authorization": "Bearer ann-0123456789abcdef"},
        timeout=30,
    )
    assert allowed.status_code == 200 and allowed.json()["data"] == {"threads": {"edges": []}}
    page = httpx.get(f"{url}/graphql", headers={"accept": "text/html"}, timeout=30)
    assert page.status_code == 401 and "graphiql" not in page.text.lower()  # no IDE with auth on
    proc.send_signal(signal.SIGTERM)
    _, log = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "ann-0123456789abcdef" not in log


def _http_get(conn: socket.socket, port: int, path: str) -> bytes:
    """One GET on a kept-alive connection; the whole answer (its Content-Length body)."""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += _received(conn)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += _received(conn)
    return head


def _received(conn: socket.socket) -> bytes:
    chunk = conn.recv(65536)
    if not chunk:
        raise ConnectionError("the server closed the connection")
    return chunk


def test_an_idle_connection_is_closed_only_after_the_keep_alive(
    serve: Serve, tmp_path: Path
) -> None:
    # A client's pool reuses an idle connection until its own expiry (httpx: 5 s, as
    # uvicorn's default): a server that closes first resets the requests sent meanwhile.
    # The default (75 s) is test_settings'; here, that serve applies the setting.
    _, url = serve("--sqlite-path", str(tmp_path / "k.sqlite"), CODE_HERO_KEEP_ALIVE_SECONDS="2")
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        assert _http_get(conn, port, "/healthz").startswith(b"HTTP/1.1 200")
        time.sleep(1)
        assert _http_get(conn, port, "/healthz").startswith(b"HTTP/1.1 200")  # still open
        time.sleep(2)
        # Closed by the server at 2 s idle; uvicorn's 5 s would hold it past 4 s.
        readable, _, _ = select.select([conn], [], [], 2)
        assert readable and conn.recv(1) == b""


def test_serve_freezes_the_heap_it_starts_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Modules and schema are frozen before uvicorn runs: the collector's full passes
    skip what lives as long as the process; and it runs ten times less often."""
    frozen: list[int] = []
    thresholds: list[int] = []

    def run(server: uvicorn.Server) -> None:  # instead of serving
        frozen.append(gc.get_freeze_count())
        thresholds.append(gc.get_threshold()[0])
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    for name in set(os.environ) - set(_env()):
        monkeypatch.delenv(name)
    previous = signal.getsignal(signal.SIGTERM)
    threshold = gc.get_threshold()
    try:
        database = f"sqlite:///{tmp_path / 'frozen.sqlite'}"
        assert main(["serve", "--port", "0", "--database-url", database]) == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        signal.signal(signal.SIGTERM, previous)
    assert frozen and frozen[0] > 10_000
    assert thresholds == [GC_THRESHOLD] and GC_THRESHOLD >= 10 * 700


def test_version_prints_the_installed_version() -> None:
    done = cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"code-hero {metadata.version('code-hero')}"
