"""The commands of `code-hero` but `serve`: each takes the parsed arguments, returns an exit code.

    schema            print the served SDL
    run               run a graph here, streaming what it does
    threads list      threads, newest first
    threads delete    a thread, its runs stopped first
    health            probe the store
    migrate           copy everything from one store to another
    prune             delete old threads (their runs stopped first), trim long histories

`run`, `threads` and `prune` act through the operator's `Gateway`, as a
resolver does; `health` and `migrate` work on stores as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from code_hero.cli.display import RunDisplay
from code_hero.cli.exits import EXIT_ERROR, EXIT_OK, RUN_EXIT
from code_hero.cli.storage import (
    OPERATOR,
    operator_gateway,
    print_json,
    require_file,
    settings_of,
    storage_flags,
)
from code_hero.config import CheckpointerConfig, config_from_url_setting
from code_hero.errors import BadInputError, CodeHeroError, ConfigurationError
from code_hero.inputs import MAX_JSON_DEPTH, check_graph_value, check_json
from code_hero.persistence import clock

__all__ = ["health", "migrate", "prune", "run", "schema", "threads_delete", "threads_list"]


def schema(args: argparse.Namespace) -> int:
    """Print the served SDL."""
    from code_hero.schema import schema

    print(schema.as_str())
    return EXIT_OK


# ------------------------------------------------------------------ run
async def run(args: argparse.Namespace) -> int:
    """Run a graph in this process and show its events; the exit code tells how it ended."""
    from code_hero.persistence.records import RunStatus
    from code_hero.runs.events import terminal_status
    from code_hero.runs.requests import UNSET, StartRun

    resume: Any = UNSET if args.resume is None else _answer(args.resume)
    request = StartRun(
        thread_id=args.thread,
        message=args.message,
        resume=resume,
        graph=args.graph,
        user_id=args.user,
        config={"require_approval": True} if args.approve else {},
    )
    display = RunDisplay.for_stdout()
    async with operator_gateway(args, runs=True) as gateway:
        started = await gateway.start_run(request, caller=OPERATOR)
        display.started(started)
        status: RunStatus | None = None
        try:
            events = await gateway.follow_run(started.run_id, caller=OPERATOR)
            async for event in events:
                display.event(event)
                status = terminal_status(event) or status
        finally:
            display.close()
        if status is None:
            final = await gateway.get_run(started.run_id, caller=OPERATOR)
            status = RunStatus.ERROR if final is None else final.status
        if gateway.manager.pending_sync:
            print(
                f"warning: {gateway.manager.pending_sync} checkpoint writes did not reach "
                f"{gateway.settings.checkpointer.describe()}",
                file=sys.stderr,
            )
    if status is RunStatus.INTERRUPTED:
        _resume_hint(args, started.thread_id)
    return RUN_EXIT.get(status.value, EXIT_ERROR)


def _answer(text: str) -> Any:
    """A resume answer: JSON when it parses (true, {"approved": false}), else the text;
    held to what the GraphQL API takes (finite numbers, bounded nesting: check_json; no
    integer past 64 bits: check_graph_value), before any storage is opened."""
    try:
        answer = json.loads(text)
    except ValueError:
        return text
    except RecursionError:  # thousands of levels: past any limit
        raise BadInputError(
            f"the resume answer nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
        ) from None
    check_graph_value(check_json(answer, "the resume answer"), "the resume answer")
    return answer


def _resume_hint(args: argparse.Namespace, thread_id: str) -> None:
    command = ["code-hero", "run", "--thread", thread_id, *storage_flags(args)]
    print(f"the run waits for an answer; resume with:\n  {shlex.join(command)} --resume yes")
    print("(the answer is text or JSON: no, 'no: too risky', '{\"approved\": false}')")


# ------------------------------------------------------------------ threads, health
async def threads_list(args: argparse.Namespace) -> int:
    """A page of threads, newest updated first, as a table or JSON."""
    from code_hero.persistence.records import ThreadFilter, ThreadStatus

    flt = ThreadFilter(user_id=args.user, status=ThreadStatus(args.status) if args.status else None)
    async with operator_gateway(args) as gateway:
        page = await gateway.threads_page(flt, first=args.first, after=args.after, caller=OPERATOR)
    if args.json:
        print_json(
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


async def threads_delete(args: argparse.Namespace) -> int:
    """Delete a thread as the deleteThread mutation does: its runs stopped, then everything."""
    async with operator_gateway(args) as gateway:
        gone = await gateway.delete_thread(args.thread_id, caller=OPERATOR)
    if not gone.deleted:
        raise CodeHeroError(f"no thread {args.thread_id!r}")
    print(
        f"deleted thread {gone.thread_id}: {gone.checkpoints_deleted} checkpoints, "
        f"{gone.runs_deleted} runs"
    )
    return EXIT_OK


async def health(args: argparse.Namespace) -> int:
    """Probe the store now and report; exit 0 only when it is healthy."""
    from code_hero.persistence.manager import EnhancedCheckpointerManager

    config = settings_of(args).gateway.checkpointer
    require_file(config)
    manager = EnhancedCheckpointerManager(config)
    await manager.initialize()
    try:
        report = await manager.health_check()
    finally:
        await manager.cleanup()
    if args.json:
        print_json(report)
    else:
        print(f"status: {report['overall_status']} (version {report['version']})")
        for b in report["backends"]:
            state = "healthy" if b["healthy"] else f"down: {' '.join(str(b['last_error']).split())}"
            active = ", active" if b["active"] else ""
            latency = f", {b['latency_ms']:.1f} ms" if b["latency_ms"] is not None else ""
            print(f"  {b['role']:<9} {b['description']}: {state}{active}{latency}")
    return EXIT_OK if report["overall_status"] == "healthy" else EXIT_ERROR


# ------------------------------------------------------------------ migrate, prune
def _same_store(source: CheckpointerConfig, target: CheckpointerConfig) -> bool:
    """Whether two configs name one store: the same URL, or one SQLite file however
    its path is written (`a//b`, `./b`, relative or absolute, through a link)."""
    if source.kind == "memory":
        return False
    if source.kind == target.kind == "sqlite":
        here, there = Path(source.database_path or ""), Path(target.database_path or "")
        with contextlib.suppress(OSError):
            if here.exists() and there.exists():
                return here.samefile(there)
        return here.resolve() == there.resolve()
    return source.describe() == target.describe()


async def migrate(args: argparse.Namespace) -> int:
    """Copy threads, checkpoints, runs and events from one store to another."""
    from code_hero.persistence.transfer import migrate

    source = config_from_url_setting("--from", args.source)
    target = config_from_url_setting("--to", args.target)
    require_file(
        source, "--from takes postgresql://..., sqlite:///path, a SQLite file's path or memory://"
    )
    if _same_store(source, target):
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
        f"{report.writes} writes, {report.runs} runs, "
        f"{report.events + report.events_there} events ({report.events} appended)"
    )
    return EXIT_OK


async def prune(args: argparse.Namespace) -> int:
    """Delete old threads (their runs stopped first) and trim long histories."""
    older_than = args.before
    async with operator_gateway(args) as gateway:
        if args.older_than is not None:  # by the database's clock, read as it opened
            older_than = clock.now() - args.older_than
        report = await gateway.prune(
            older_than=older_than, keep_latest=args.keep_latest, caller=OPERATOR
        )
    print(
        f"pruned {report.threads_deleted} threads, {report.checkpoints_deleted} checkpoints, "
        f"{report.runs_deleted} runs"
    )
    return EXIT_OK
