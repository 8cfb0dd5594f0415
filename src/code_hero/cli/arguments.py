"""The arguments of every `code-hero` subcommand, and the command each one runs.

Parsing imports nothing heavy: --help and bad arguments answer at once
(exit 2) without loading LangGraph or opening a store.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from code_hero.cli import commands
from code_hero.cli.serve import serve as serve_gateway
from code_hero.errors import BadInputError
from code_hero.inputs import check_thread_id
from code_hero.limits import Limits

__all__ = ["THREAD_STATUSES", "build_parser", "check"]

# A copy of ThreadStatus (the page limit is Limits.max_page), so that --help and bad
# arguments answer without importing LangGraph (tests/test_cli.py checks them).
THREAD_STATUSES = ("IDLE", "BUSY", "INTERRUPTED", "ERROR")
DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$", re.IGNORECASE)
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _duration(text: str) -> timedelta:
    match = DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30d, 12h or 15m")
    try:
        span = timedelta(**{UNITS[match.group(2).lower()]: int(match.group(1))})
        datetime.now(UTC) - span  # the cutoff it makes must be a time
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} reaches back before year 1") from None
    return span


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        value.astimezone(UTC)  # the database compares UTC
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is outside years 1 to 9999 in UTC") from None
    return value


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


class _Version(argparse.Action):
    """`--version`: the installed distribution's version, looked up only when asked
    (importlib.metadata is not a light import)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib import metadata

        try:
            version = metadata.version("code-hero")
        except metadata.PackageNotFoundError:  # a source tree never installed
            version = "(not installed)"
        print(f"{parser.prog} {version}")  # on stdout, as argparse's own version action
        parser.exit()


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
        epilog=(
            "exit codes: 0 done, 1 error (a value the store or gateway refuses too), "
            "2 a malformed command line, 3 run waits for an answer"
        ),
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = subcommands.add_parser(
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
    serve.add_argument(
        "--no-ui",
        action="store_true",
        help="do not serve the dashboard at /ui (CODE_HERO_UI=false)",
    )
    serve.set_defaults(handler=serve_gateway)

    schema = subcommands.add_parser("schema", parents=[common], help="print the served SDL")
    schema.set_defaults(handler=commands.schema)

    run = subcommands.add_parser(
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
    run.set_defaults(handler=commands.run, command_parser=run)

    threads = subcommands.add_parser("threads", help="list or delete threads")
    thread_commands = threads.add_subparsers(dest="threads_command", required=True)
    listing = thread_commands.add_parser("list", parents=[storage], help="threads, newest first")
    listing.add_argument("--user", help="only this user's threads")
    listing.add_argument("--status", type=str.upper, choices=THREAD_STATUSES)
    listing.add_argument("--first", type=_int_between(1, Limits.max_page), default=20)
    listing.add_argument("--after", metavar="CURSOR", help="the cursor a previous page printed")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=commands.threads_list)
    delete = thread_commands.add_parser(
        "delete", parents=[storage], help="delete a thread: checkpoints, runs, events"
    )
    delete.add_argument("thread_id", metavar="ID", type=_thread_id)
    delete.set_defaults(handler=commands.threads_delete)

    health = subcommands.add_parser(
        "health", parents=[storage], help="probe the store: exit 0 when it serves, 1 otherwise"
    )
    health.add_argument("--json", action="store_true", help="print the report as JSON")
    health.set_defaults(handler=commands.health)

    migrate = subcommands.add_parser(
        "migrate", parents=[common], help="copy threads, checkpoints and runs between stores"
    )
    migrate.add_argument("--from", dest="source", required=True, metavar="URL")
    migrate.add_argument("--to", dest="target", required=True, metavar="URL")
    migrate.set_defaults(handler=commands.migrate)

    prune = subcommands.add_parser(
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
    prune.set_defaults(handler=commands.prune, command_parser=prune)
    return parser


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rules between options that argparse cannot state (exit 2 when one is broken,
    with the usage of the subcommand broken, as argparse's own refusals show it)."""
    parser = getattr(args, "command_parser", parser)
    if args.command == "run":
        if (args.message is None) == (args.resume is None):
            parser.error("run needs a MESSAGE or --resume ANSWER (one of them)")
        if args.resume is not None and not args.thread:
            parser.error("--resume needs --thread: the thread that waits for the answer")
    if args.command == "prune" and args.older_than is None and args.before is None:
        if args.keep_latest is None:
            parser.error("prune needs --older-than, --before or --keep-latest")
