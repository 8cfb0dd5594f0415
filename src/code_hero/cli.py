"""The `code-hero` command: serve the gateway, run graphs, and look after the storage.

    code-hero serve                    the GraphQL gateway (uvicorn)
    code-hero schema                   print the served SDL
    code-hero run MESSAGE              run a graph here, streaming what it does
    code-hero threads list | delete ID
    code-hero health                   exit 0 when the configured store serves, 1 otherwise
    code-hero migrate --from URL --to URL
    code-hero prune --older-than 30d | --before ISO | --keep-latest N

Every command that opens storage takes --database-url and --sqlite-path and
otherwise follows the environment (see `code_hero.settings.ENVIRONMENT`).
`serve` without API keys or JWT settings is open, and then listens on a
loopback address only, unless --allow-anonymous. The other commands act on
the store directly, as its operator: they need no credentials.
Exit codes: 0 done, 1 an error (one `error:` line on stderr), 2 bad
arguments, 3 a run that waits for an answer (INTERRUPTED).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import ipaddress
import json
import logging
import re
import shlex
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from code_hero.config import config_from_url
from code_hero.errors import (
    BackendUnavailableError,
    BadInputError,
    CodeHeroError,
    ConfigurationError,
)
from code_hero.inputs import check_thread_id

if TYPE_CHECKING:  # the heavy modules load only once a command needs them
    from code_hero.config import CheckpointerConfig
    from code_hero.persistence.manager import EnhancedCheckpointerManager
    from code_hero.persistence.records import EventRecord, RunRecord
    from code_hero.settings import AppSettings

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 3
RUN_EXIT = {"SUCCESS": EXIT_OK, "INTERRUPTED": EXIT_INTERRUPTED}
# Copies of ThreadStatus and the manager's MAX_PAGE, so that --help and bad
# arguments answer without importing LangGraph (tests/test_cli.py checks them).
THREAD_STATUSES = ("IDLE", "BUSY", "INTERRUPTED", "ERROR")
MAX_PAGE = 100
DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# ------------------------------------------------------------------ arguments
def _duration(text: str) -> timedelta:
    match = DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30d, 12h or 15m")
    return timedelta(**{UNITS[match.group(2).lower()]: int(match.group(1))})


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _thread_id(text: str) -> str:
    try:
        return check_thread_id(text, "a thread id")
    except BadInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    storage = argparse.ArgumentParser(add_help=False, parents=[common])
    storage.add_argument("--database-url", help="postgresql://..., sqlite:///path or memory://")
    storage.add_argument("--sqlite-path", help="a SQLite file (default checkpoints.sqlite)")
    graphs = argparse.ArgumentParser(add_help=False)
    graphs.add_argument("--graphs", help="extra graphs: name=package.module:attr,...")
    graphs.add_argument("--langgraph-json", help="serve the graphs of this langgraph.json")

    parser = argparse.ArgumentParser(
        prog="code-hero",
        description="Code Hero Gateway: GraphQL over LangGraph checkpoints and agent runs.",
        epilog="exit codes: 0 done, 1 error, 2 bad arguments, 3 run waits for an answer",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", parents=[storage, graphs], help="serve the GraphQL gateway"
    )
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=_int_between(0, 65535), help="listen port (default 8000)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="with no API keys or JWT configured, listen on a non-loopback address anyway",
    )
    serve.set_defaults(handler=_serve)

    schema = commands.add_parser("schema", parents=[common], help="print the served SDL")
    schema.set_defaults(handler=_schema)

    run = commands.add_parser(
        "run", parents=[storage, graphs], help="run a graph here and stream what it does"
    )
    run.add_argument("message", nargs="?", help="the user message")
    run.add_argument("--thread", type=_thread_id, help="continue this thread (default: a new one)")
    run.add_argument("--graph", help="the graph to run (default: the default graph)")
    run.add_argument("--user", help="the user id recorded on the thread and run")
    run.add_argument(
        "--approve", action="store_true", help="ask for approval before the work is handed on"
    )
    run.add_argument("--resume", metavar="ANSWER", help="answer an interrupted thread's question")
    run.set_defaults(handler=_run)

    threads = commands.add_parser("threads", help="list or delete threads")
    thread_commands = threads.add_subparsers(dest="threads_command", required=True)
    listing = thread_commands.add_parser("list", parents=[storage], help="threads, newest first")
    listing.add_argument("--user", help="only this user's threads")
    listing.add_argument("--status", type=str.upper, choices=THREAD_STATUSES)
    listing.add_argument("--first", type=_int_between(1, MAX_PAGE), default=20)
    listing.add_argument("--after", metavar="CURSOR", help="the cursor a previous page printed")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_threads_list)
    delete = thread_commands.add_parser(
        "delete", parents=[storage], help="delete a thread: checkpoints, runs, events"
    )
    delete.add_argument("thread_id", metavar="ID", type=_thread_id)
    delete.set_defaults(handler=_threads_delete)

    health = commands.add_parser(
        "health", parents=[storage], help="probe the store: exit 0 when it serves, 1 otherwise"
    )
    health.add_argument("--json", action="store_true", help="print the report as JSON")
    health.set_defaults(handler=_health)

    migrate = commands.add_parser(
        "migrate", parents=[common], help="copy threads, checkpoints and runs between stores"
    )
    migrate.add_argument("--from", dest="source", required=True, metavar="URL")
    migrate.add_argument("--to", dest="target", required=True, metavar="URL")
    migrate.set_defaults(handler=_migrate)

    prune = commands.add_parser(
        "prune", parents=[storage], help="delete old threads, trim long histories"
    )
    when = prune.add_mutually_exclusive_group()
    when.add_argument(
        "--older-than", type=_duration, metavar="DURATION", help="not updated for 30d, 12h, ..."
    )
    when.add_argument("--before", type=_instant, metavar="ISO", help="not updated since then")
    prune.add_argument(
        "--keep-latest",
        type=_int_between(1, 1_000_000),
        metavar="N",
        help="keep only the newest N checkpoints of each thread",
    )
    prune.set_defaults(handler=_prune)
    return parser


# ------------------------------------------------------------------ storage
def _settings(args: argparse.Namespace, **options: Any) -> AppSettings:
    from code_hero.settings import settings_from_env

    return settings_from_env(
        database_url=getattr(args, "database_url", None),
        sqlite_path=getattr(args, "sqlite_path", None),
        graphs=getattr(args, "graphs", None),
        langgraph_json=getattr(args, "langgraph_json", None),
        **options,
    )


def _stored_config(args: argparse.Namespace) -> CheckpointerConfig:
    """The configured store, which must already exist when it is a SQLite file."""
    config = _settings(args).gateway.checkpointer
    _require_file(config)
    return config


def _require_file(config: CheckpointerConfig) -> None:
    if config.kind == "sqlite" and not Path(config.database_path or "").exists():
        raise ConfigurationError(
            f"no SQLite database at {config.database_path}: nothing is stored there yet "
            "(pass --sqlite-path or --database-url)"
        )


def _require_primary(manager: EnhancedCheckpointerManager) -> None:
    """A one-shot command works on the configured store or not at all (no memory fallback)."""
    primary = manager.router.primary
    if manager.router.active != 0:
        raise BackendUnavailableError(
            f"cannot open {primary.config.describe()}: {primary.last_error or 'unavailable'}"
        )


@contextlib.asynccontextmanager
async def _manager(config: CheckpointerConfig) -> AsyncIterator[EnhancedCheckpointerManager]:
    from code_hero.persistence.manager import EnhancedCheckpointerManager

    manager = EnhancedCheckpointerManager(config.with_options(enable_fallback=False))
    await manager.initialize()
    try:
        _require_primary(manager)
        yield manager
    finally:
        await manager.cleanup()


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2))


def _storage_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    for name in ("database_url", "sqlite_path", "graphs", "langgraph_json"):
        value = getattr(args, name, None)
        if value:
            flags += [f"--{name.replace('_', '-')}", value]
    return flags


# ------------------------------------------------------------------ serve, schema
def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from code_hero.app import create_app

    settings = _settings(
        args,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        allow_anonymous=args.allow_anonymous,
    )
    open_to_network = not settings.auth.enabled and not _is_loopback(settings.host)
    if open_to_network and not settings.auth.allow_anonymous:
        raise ConfigurationError(
            f"refusing to serve {settings.host} without authentication: set CODE_HERO_API_KEYS "
            "(or CODE_HERO_API_KEYS_FILE, CODE_HERO_JWT_SECRET, CODE_HERO_JWT_JWKS), "
            "listen on 127.0.0.1, or pass --allow-anonymous"
        )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)-9s %(name)s: %(message)s"
    )
    # The pool warns at every failed reconnect (several a second during an outage);
    # the fallback router logs one line when an outage starts and one when it ends.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    if open_to_network:
        log = logging.getLogger("code_hero.security")
        log.warning("!" * 72)
        log.warning(
            "NO AUTHENTICATION on %s:%s (--allow-anonymous): anyone who can reach it can read, "
            "run and delete every thread",
            settings.host,
            settings.port,
        )
        log.warning("!" * 72)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            lifespan="on",
            # The sans-I/O implementation holds less memory per idle socket than
            # uvicorn's default (172 -> 108 KB measured alone; see the issue 5 note).
            ws="websockets-sansio",
        )
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal: a
    # handler of our own turns that into a clean exit 0 (the lifespan has by
    # then closed the gateway, leaving unfinished runs resumable).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # uvicorn exits 3 when the app's lifespan fails to start
        if exc.code == EXIT_OK:
            raise
    if not server.started:
        raise CodeHeroError("the server did not start (see the log above)")
    return EXIT_OK


def _is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine reaches."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def _exit_cleanly(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(EXIT_OK)


def _schema(args: argparse.Namespace) -> int:
    from code_hero.schema import schema

    print(schema.as_str())
    return EXIT_OK


# ------------------------------------------------------------------ run
class RunView(Protocol):
    """How `run` shows a run's events: rich on a terminal, plain lines otherwise."""

    def started(self, run: RunRecord) -> None: ...
    def event(self, event: EventRecord) -> None: ...
    def close(self) -> None: ...


def _question(value: Any) -> str:
    if isinstance(value, Mapping) and isinstance(value.get("question"), str):
        return str(value["question"])
    return json.dumps(_jsonable(value))


def _transition(payload: Mapping[str, Any]) -> str:
    text = f"{payload.get('from') or 'START'} -> {payload.get('to')}"
    return f"{text}: {payload['reason']}" if payload.get("reason") else text


def _status(payload: Mapping[str, Any]) -> str:
    error = payload.get("error")
    return f"{payload.get('status')}: {error}" if error else str(payload.get("status"))


class PlainView:
    """Plain lines, message deltas streamed as they come (for pipes and logs)."""

    def __init__(self) -> None:
        self._message: str | None = None
        self._midline = False

    def _line(self, text: str) -> None:
        if self._midline:
            sys.stdout.write("\n")
            self._midline = False
            self._message = None
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def started(self, run: RunRecord) -> None:
        self._line(f"[run] {run.run_id} on thread {run.thread_id} (graph {run.graph})")

    def event(self, event: EventRecord) -> None:
        from code_hero.runs.events import EventType, terminal_status

        payload = event.payload
        if event.type == EventType.AGENT_TRANSITION:
            self._line(f"[transition] {_transition(payload)}")
        elif event.type == EventType.MESSAGE_DELTA:
            message = payload.get("message_id")
            if self._midline and message != self._message:
                sys.stdout.write("\n")
            self._message = message
            sys.stdout.write(str(payload.get("delta", "")))
            sys.stdout.flush()
            self._midline = True
        elif event.type == EventType.TOOL_CALL:
            self._line(f"[tool] {payload.get('agent')} called {payload.get('tool')}")
        elif event.type == EventType.INTERRUPT:
            self._line(f"[interrupt] {_question(payload.get('value'))}")
        elif terminal_status(event) is not None:
            self._line(f"[status] {_status(payload)}")

    def close(self) -> None:
        if self._midline:
            self._line("")


class RichView:
    """A live display: transitions printed above, the answer growing under a spinner."""

    def __init__(self) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.spinner import Spinner
        from rich.text import Text

        self.console, self.answer, self._message = Console(), Text(), None
        self.spinner = Spinner("dots", text="waiting for the run to start")
        self.group = Group(self.answer, self.spinner)
        self.live = Live(self.group, console=self.console, vertical_overflow="visible")

    def _print(self, mark: str, style: str, text: str) -> None:
        from rich.text import Text

        self.live.console.print(Text.assemble((mark + " ", style), text))

    def started(self, run: RunRecord) -> None:
        self.console.print(f"[dim]run[/] {run.run_id} [dim]on thread[/] [bold]{run.thread_id}")
        self.live.start()

    def event(self, event: EventRecord) -> None:
        from rich.text import Text

        from code_hero.runs.events import EventType, terminal_status

        payload = event.payload
        if event.type == EventType.AGENT_TRANSITION:
            self._print("→", "cyan", _transition(payload))
            self.spinner.update(text=f"{payload.get('to')} is working")
        elif event.type == EventType.MESSAGE_DELTA:
            message = payload.get("message_id")
            if self.answer.plain and message != self._message:
                self.answer.append("\n\n")
            self._message = message
            self.answer.append(str(payload.get("delta", "")))
        elif event.type == EventType.TOOL_CALL:
            self._print("⚙", "magenta", f"{payload.get('agent')} called {payload.get('tool')}")
        elif event.type == EventType.INTERRUPT:
            self._print("?", "bold yellow", _question(payload.get("value")))
        elif (status := terminal_status(event)) is not None:
            style = {"SUCCESS": "green", "INTERRUPTED": "yellow"}.get(status.value, "red")
            self.group.renderables[-1] = Text("● " + _status(payload), style=style)
        elif event.type == EventType.STATUS:
            self.spinner.update(text=str(payload.get("status")).lower())

    def close(self) -> None:
        self.live.stop()


async def _run(args: argparse.Namespace) -> int:
    from code_hero.gateway import Gateway
    from code_hero.persistence.records import RunStatus
    from code_hero.runs.events import terminal_status
    from code_hero.runs.executor import UNSET, StartRun

    settings = _settings(args)
    resume: Any = UNSET if args.resume is None else _answer(args.resume)
    request = StartRun(
        thread_id=args.thread,
        message=args.message,
        resume=resume,
        graph=args.graph,
        user_id=args.user,
        config={"require_approval": True} if args.approve else {},
    )
    view: RunView = RichView() if sys.stdout.isatty() else PlainView()
    # Only its own run: against a shared database the servers' runs are theirs to execute.
    async with Gateway(replace(settings.gateway, claim_others=False)) as gateway:
        _require_primary(gateway.manager)
        run = await gateway.start_run(request)
        view.started(run)
        status: RunStatus | None = None
        try:
            async for event in await gateway.follow_run(run.run_id):
                view.event(event)
                status = terminal_status(event) or status
        finally:
            view.close()
        if status is None:
            final = await gateway.get_run(run.run_id)
            status = RunStatus.ERROR if final is None else final.status
        if gateway.manager.pending_sync:
            print(
                f"warning: {gateway.manager.pending_sync} checkpoint writes did not reach "
                f"{settings.gateway.checkpointer.describe()}",
                file=sys.stderr,
            )
    if status is RunStatus.INTERRUPTED:
        command = ["code-hero", "run", "--thread", run.thread_id, *_storage_flags(args)]
        print(f"the run waits for an answer; resume with:\n  {shlex.join(command)} --resume yes")
        print("(the answer is text or JSON: no, 'no: too risky', '{\"approved\": false}')")
    return RUN_EXIT.get(status.value, EXIT_ERROR)


def _answer(text: str) -> Any:
    """A resume answer: JSON when it parses (true, {"approved": false}), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# ------------------------------------------------------------------ threads, health
async def _threads_list(args: argparse.Namespace) -> int:
    from code_hero.persistence.records import ThreadFilter, ThreadStatus

    flt = ThreadFilter(user_id=args.user, status=ThreadStatus(args.status) if args.status else None)
    async with _manager(_stored_config(args)) as manager:
        page = await manager.threads_page(flt, first=args.first, after=args.after)
    if args.json:
        _print_json(
            {
                "threads": [asdict(t) for t in page.items],
                "end_cursor": page.end_cursor,
                "has_next_page": page.has_next_page,
            }
        )
        return EXIT_OK
    if not page.items:
        print("no threads")
        return EXIT_OK
    width = max(len(t.thread_id) for t in page.items)
    print(f"{'THREAD':<{width}}  {'STATUS':<11}  {'UPDATED':<25}  USER")
    for t in page.items:
        updated = t.updated_at.isoformat(timespec="seconds")
        print(f"{t.thread_id:<{width}}  {t.status.value:<11}  {updated:<25}  {t.user_id or '-'}")
    if page.has_next_page:
        print(f"more: code-hero threads list --after {page.end_cursor}")
    return EXIT_OK


async def _threads_delete(args: argparse.Namespace) -> int:
    async with _manager(_stored_config(args)) as manager:
        gone = await manager.purge_thread(args.thread_id)
    if not gone.deleted:
        raise CodeHeroError(f"no thread {args.thread_id!r}")
    print(
        f"deleted thread {gone.thread_id}: {gone.checkpoints_deleted} checkpoints, "
        f"{gone.runs_deleted} runs"
    )
    return EXIT_OK


async def _health(args: argparse.Namespace) -> int:
    from code_hero.persistence.manager import EnhancedCheckpointerManager

    manager = EnhancedCheckpointerManager(_stored_config(args))
    await manager.initialize()
    try:
        report = await manager.health_check()
    finally:
        await manager.cleanup()
    if args.json:
        _print_json(report)
    else:
        print(f"status: {report['overall_status']} (version {report['version']})")
        for b in report["backends"]:
            state = "healthy" if b["healthy"] else f"down: {' '.join(str(b['last_error']).split())}"
            active = ", active" if b["active"] else ""
            latency = f", {b['latency_ms']:.1f} ms" if b["latency_ms"] is not None else ""
            print(f"  {b['role']:<9} {b['description']}: {state}{active}{latency}")
    return EXIT_OK if report["overall_status"] == "healthy" else EXIT_ERROR


# ------------------------------------------------------------------ migrate, prune
async def _migrate(args: argparse.Namespace) -> int:
    from code_hero.persistence.transfer import migrate

    source, target = config_from_url(args.source), config_from_url(args.target)
    _require_file(source)
    if source.kind != "memory" and source.describe() == target.describe():
        raise ConfigurationError("--from and --to name the same store")
    print(f"copying {source.describe()} -> {target.describe()}")
    if sys.stdout.isatty():
        from rich.progress import Progress

        with Progress() as bar:
            task = bar.add_task("threads", total=None)

            def advance(done: int, total: int, thread_id: str) -> None:
                bar.update(task, completed=done, total=total, description=thread_id[:36])

            report = await migrate(source, target, progress=advance)
    else:

        def line(done: int, total: int, thread_id: str) -> None:
            print(f"[{done}/{total}] {thread_id}", flush=True)

        report = await migrate(source, target, progress=line)
    print(
        f"copied {report.threads} threads, {report.checkpoints} checkpoints, "
        f"{report.writes} writes, {report.runs} runs, {report.events} events"
    )
    return EXIT_OK


async def _prune(args: argparse.Namespace) -> int:
    older_than = args.before
    if args.older_than is not None:
        older_than = datetime.now(UTC) - args.older_than
    async with _manager(_stored_config(args)) as manager:
        report = await manager.prune(older_than=older_than, keep_latest=args.keep_latest)
    print(
        f"pruned {report.threads_deleted} threads, {report.checkpoints_deleted} checkpoints, "
        f"{report.runs_deleted} runs"
    )
    return EXIT_OK


# ------------------------------------------------------------------ main
def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rules between options that argparse cannot state."""
    if args.command == "run":
        if (args.message is None) == (args.resume is None):
            parser.error("run needs a MESSAGE or --resume ANSWER (one of them)")
        if args.resume is not None and not args.thread:
            parser.error("--resume needs --thread: the thread that waits for the answer")
    if args.command == "prune" and args.older_than is None and args.before is None:
        if args.keep_latest is None:
            parser.error("prune needs --older-than, --before or --keep-latest")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `code-hero` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    if args.command != "serve":
        if args.verbose:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        else:  # the command reports what matters itself; no log lines, no tracebacks
            logging.disable(logging.CRITICAL)
    try:
        done = args.handler(args)  # an exit code, or a coroutine that returns one
        return int(asyncio.run(done) if inspect.iscoroutine(done) else done)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CodeHeroError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
    except Exception as exc:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
