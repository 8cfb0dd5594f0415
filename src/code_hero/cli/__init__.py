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
the store through the gateway, as its operator (an administrator): they need
no credentials. A thread deleted or pruned here has its runs stopped first,
wherever they execute, as the deleteThread mutation does.
Exit codes: 0 done, 1 an error (one `error:` line on stderr), 2 bad
arguments, 3 a run that waits for an answer (INTERRUPTED).

    arguments.py   the parser and the rules between options
    commands.py    schema, run, threads, health, migrate, prune
    display.py     how `run` shows a run's events (plain lines or a live display)
    serve.py       uvicorn, logging and signals
    storage.py     settings from the options, the operator's gateway
    exits.py       the exit codes
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
import traceback
from collections.abc import Sequence

from code_hero.cli.arguments import THREAD_STATUSES, build_parser, check
from code_hero.cli.deferred import defer_package_inits
from code_hero.cli.exits import EXIT_ERROR
from code_hero.errors import CodeHeroError

__all__ = ["THREAD_STATUSES", "build_parser", "main"]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `code-hero` command; returns the exit code."""
    # Before anything imports LangGraph: the libraries' package inits no command needs
    # run when first used instead (cli/deferred.py). A command that opens the store
    # starts in about 1.2 s of CPU instead of 1.7.
    defer_package_inits()
    parser = build_parser()
    args = parser.parse_args(argv)
    check(parser, args)
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
