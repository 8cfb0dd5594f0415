"""`code-hero serve`: the gateway under uvicorn, its logging and its signals.

Without API keys or JWT settings the gateway is open, and then listens on a
loopback address only, unless --allow-anonymous (which it announces loudly).
SIGTERM ends it gracefully with exit 0: the lifespan closes the gateway and
leaves unfinished runs resumable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sqlite3
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

from code_hero.cli.deferred import deferred_model_builds
from code_hero.cli.exits import EXIT_OK
from code_hero.cli.storage import settings_of
from code_hero.errors import CodeHeroError, ConfigurationError

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from code_hero.settings import AppSettings

__all__ = ["ANSWERS_BOUND", "GC_THRESHOLD", "MALLOC_ARENAS", "serve", "tune_collector"]

# At a stop, how long the waiting starts' answers may take to go out before uvicorn
# closes the sockets they go on (an answer is a few milliseconds' work).
ANSWERS_BOUND = 2.0

# The collector's first-generation threshold while serving (Python's default: 700).
GC_THRESHOLD = 7_000
# glibc malloc arenas while serving, unless MALLOC_ARENA_MAX says otherwise (glibc's
# default: 8 per core).
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h


def serve(args: argparse.Namespace) -> int:
    """Serve the GraphQL gateway until SIGTERM or Ctrl-C."""
    # From its modules: the package's `__init__` would load its command line too.
    from uvicorn.config import Config
    from uvicorn.server import Server

    from code_hero.cli.http_protocol import OneWriteProtocol

    with deferred_model_builds():
        from code_hero.app import create_app
    from code_hero.settings import is_loopback

    settings = settings_of(
        args,
        serving=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        allow_anonymous=args.allow_anonymous,
        ui=False if args.no_ui else None,
    )
    open_to_network = not settings.auth.enabled and not is_loopback(settings.host)
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
    settings = _fallback_file_checked(settings)
    _cap_malloc_arenas()
    starlette = create_app(settings)
    app = _StartupErrors(starlette)
    tune_collector()

    class StoppingServer(Server):
        """uvicorn's server, telling the app when it begins to stop: the app's SSE
        streams end and its waiting starts are answered, else uvicorn would wait for
        them before the lifespan's shutdown. Those answers are sent before uvicorn
        closes every WebSocket (1012, at once), within ANSWERS_BOUND seconds (a
        client that does not read may hold its send)."""

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for listening in self.servers:  # no connection begins meanwhile (as uvicorn's)
                listening.close()
            starlette.state.stopping.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ANSWERS_BOUND):
                    await starlette.state.waits.answered()
            await super().shutdown(sockets)

    server = StoppingServer(
        Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            # uvicorn formats an access line for every response (client address, path)
            # and hands it to its logger, which drops it below INFO: only where it shows.
            access_log=settings.log_level.lower() in ("info", "debug", "trace"),
            lifespan="on",
            # Longer than the clients' pools keep an idle connection: a request sent on
            # one as the server closes it would be reset (settings.DEFAULT_KEEP_ALIVE).
            timeout_keep_alive=settings.keep_alive,  # type: ignore[arg-type]
            # httptools, as uvicorn's "auto" picks, but a response's head and body in one
            # write (one send() syscall instead of two) when the body follows at once.
            http=OneWriteProtocol,
            # The sans-I/O implementation holds less memory per idle socket than
            # uvicorn's default (172 -> 108 KB per idle socket, measured with the server alone).
            ws="websockets-sansio",
            # No permessage-deflate: its zlib state costs each idle socket tens of KB,
            # and a shared stream would compress the same payload once per socket.
            ws_per_message_deflate=False,
            # A socket message is held whole before it is parsed: no bigger than a body.
            ws_max_size=settings.limits.max_body_bytes,
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
    if app.failure is not None:  # the operator's mistake: told in one line
        raise app.failure
    if not server.started:
        raise CodeHeroError("the server did not start (see the log above)")
    return EXIT_OK


def tune_collector() -> None:
    """The garbage collector as a serving process runs it (`serve`, and the benches
    that measure the executor in their own process: bench/runs.py)."""
    # The modules and the schema (nearly all of the heap) live as long as the process:
    # frozen, the collector's full passes skip them (1.8 % of a thread-list page's
    # instructions; callgrind).
    gc.collect()
    gc.freeze()
    # A run allocates thousands of containers that nearly all die young by reference
    # count: at the default threshold (700) the collector ran about every second run,
    # a gen-1 pass every ten of those, and took 2.3 % of the instructions of
    # bench/peer.py's 16-client row (callgrind). Ten times fewer passes find the same
    # garbage a little later.
    gc.set_threshold(GC_THRESHOLD)


class _StartupErrors:
    """The app, with a start-up failure that is the operator's to fix (a CodeHeroError:
    a graph that cannot be loaded, an unknown model or default graph, a database
    required and down) kept for `serve` to tell in one `error:` line, as `code-hero
    run` does, instead of the traceback Starlette hands uvicorn to log. Anything else
    (a bug) keeps its traceback in the log."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.failure: CodeHeroError | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def send_failure_later(message: Message) -> None:
            # Starlette sends the failure (with its traceback) first and raises after:
            # which exception it was is known only then.
            if message["type"] == "lifespan.startup.failed":
                held.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, send_failure_later)
        except CodeHeroError as exc:
            if held:
                self.failure = exc
                held[:] = [{"type": "lifespan.startup.failed", "message": ""}]
            raise
        finally:
            for message in held:
                await send(message)


def _cap_malloc_arenas() -> None:
    """At most MALLOC_ARENAS glibc malloc arenas; nothing elsewhere or when the
    environment sets MALLOC_ARENA_MAX (glibc reads it itself)."""
    # glibc gives each thread that mallocs an arena of its own, up to 8 per core:
    # each aiosqlite connection's thread (the primary's and both in-memory fallbacks')
    # kept one, about 0.8 MiB each at start-up. Two arenas: 0.8 MiB less resident at
    # start-up, 0.5 MiB less after bench/peer.py's workload.
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError, TypeError):  # no ctypes, not glibc
        return
    mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def _exit_cleanly(signum: int, frame: FrameType | None) -> NoReturn:
    raise SystemExit(EXIT_OK)


def _fallback_file_checked(settings: AppSettings) -> AppSettings:
    """The settings to serve with, once the durable fallback's file is known usable:
    taken and let go at once (a file others may write, or every name held: one-line
    error). A directory where the file cannot be made (a read-only root filesystem, a
    unit whose working directory is /): with the default path, one WARNING and the
    in-memory fallback, as before there was a file; with the path set, an error."""
    from code_hero.persistence.outagefile import OutageFile

    config = settings.gateway.checkpointer
    path = config.fallback_path
    if path is None:
        return settings
    try:
        OutageFile.claim(path, config.describe()).close()
    except (OSError, sqlite3.Error) as exc:
        where = os.path.abspath(path)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if os.environ.get("CODE_HERO_FALLBACK_PATH", "").strip():
            raise ConfigurationError(
                f"CODE_HERO_FALLBACK_PATH={path}: cannot make the fallback file {where} "
                f"({reason}): set it to a file on a writable volume, or to memory"
            ) from None
        logging.getLogger("code_hero.checkpointing").warning(
            "cannot make the durable fallback file %s (%s): an outage's writes are held "
            "in memory only, lost if the process dies; set CODE_HERO_FALLBACK_PATH to a "
            "file on a writable volume (or to memory, to say so)",
            where,
            reason,
        )
        checkpointer = config.with_options(fallback_path=None)
        return replace(settings, gateway=replace(settings.gateway, checkpointer=checkpointer))
    return settings
