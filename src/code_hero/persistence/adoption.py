"""Adopting the fallback file of a replica that died in an outage and never came back.

Replicas on one machine each hold a fallback file of their own (`outagefile.py`:
`<stem>-2<suffix>`, ...). One that dies during an outage and is not started again
(scaled down: compose --scale, systemd template units) leaves the writes it
acknowledged in its file, and a restart takes only one file. So a live server
with a durable fallback adopts such a file: at start and at each health probe, while
its own primary serves, it looks at the other names of its setting (`Adoptions.poke`;
in an outage the dead replica may yet be restarted and take its file back), and takes a file
whose lock is free (its owner is dead), whose outage is its own database's and
which holds entries waiting. The file's lock decides: of two servers looking,
one adopts it; a live process's file is never opened for writing.

An adopted file is resumed as a restart on it would resume it, by a router of its
own that serves nobody (`FallbackRouter.open` on the file, the primary on a small
pool of its own): its entries go into the database once it answers, with a
restart's late-copy semantics (nothing newer rolled back, unfinished runs in
under the dead process's lease, claimed and resumed by an executor once it lapses,
entries this process cannot read yet held, refused ones quarantined). Once
nothing waits, the router's switch back empties the file and gives its disk
back, and closing the router releases the lock: a later server takes the name.
Until then the file stays as it was on disk, so a server that dies while it
adopts leaves it to the next one.

The look is a background task, one round at a time, never awaited by a probe
or a request: the files are read off the event loop (the scan on a thread, the
journal's entries by `FallbackRouter.open`'s attach on a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from code_hero.config import (
    CheckpointerConfig,
    create_memory_checkpointer,
    create_sqlite_checkpointer,
)
from code_hero.persistence import clock
from code_hero.persistence.fallback import FallbackRouter
from code_hero.persistence.metrics import Metrics
from code_hero.persistence.outagefile import OutageFile, siblings
from code_hero.persistence.slots import BackendSlot

__all__ = ["AdoptedFile", "Adoption", "Adoptions"]

log = logging.getLogger(__name__)

# Connections an adopted file's copy-back may hold in the database at once: the
# serving pool keeps the rest.
_POOL_MAX = 4


@dataclass(frozen=True)
class AdoptedFile:
    """A dead replica's file this server holds, and what still waits in it."""

    path: Path
    since: datetime  # adopted then
    pending_sync: int  # writes not yet in the database
    quarantined: int  # refused by it, or not readable by this version: kept and retried
    last_error: str | None  # why the last step failed (or the database's last error)


@dataclass(frozen=True)
class Adoption:
    """How the last adoption ended: its file copied, emptied and released, or a failure
    (tried again at the next look)."""

    path: Path | None  # None: the look for files failed, no file in particular
    at: datetime
    writes: int  # the outage writes it held when adopted
    threads: int
    error: str | None  # None: copied, emptied and released


class Adoptions:
    """The other fallback files of this server's setting it adopted, and the look for
    more (`poke`)."""

    def __init__(
        self, config: CheckpointerConfig, taken: Path, *, serving: Callable[[], bool]
    ) -> None:
        assert config.fallback_path
        self.config = config
        # Whether this server's own primary serves: files are looked for only then. In
        # an outage a dead replica may be restarted any moment (systemd's Restart=, a
        # pod's restart), and takes its own file back, served from it; adopted then, it
        # would wait for the database in this server all the same, out of its reach.
        self.serving = serving
        self.base = Path(config.fallback_path).absolute()  # as `claim` names it
        self.taken = taken
        self.adopted: dict[Path, FallbackRouter] = {}
        self._sizes: dict[Path, tuple[int, int]] = {}  # (entries, threads) when adopted
        self._since: dict[Path, datetime] = {}  # when each was adopted
        # Adopted files whose journal was read (`open`): the others' waiting writes are
        # what the scan counted. Not `journal.store`: a close sets that to None too.
        self._read: set[Path] = set()
        self._errors: dict[Path, str] = {}  # each adopted file's step that failed last
        # How the last adoption ended, and how many were copied and failed (`/metrics`).
        self.last: Adoption | None = None
        self.copied = 0
        self.failures = 0
        self._found: list[OutageFile] = []  # locked by the scan, not adopted yet
        self._found_lock = threading.Lock()  # the scan's thread and `close`
        self._left: set[tuple[Path, str]] = set()  # files left alone, told once
        # Files left alone, by their journal's size and time then: not locked again
        # at each look while they stay so (another database's server may want one).
        self._unchanged: dict[Path, tuple[int, int]] = {}
        self._left_now: set[Path] = set()
        self._task: asyncio.Task[None] | None = None
        self._failing: dict[str, str] = {}  # each step's last error, logged once
        self._closed = False

    @property
    def waiting(self) -> dict[Path, int]:
        """Each adopted file opened, and the writes in it still waiting for the database
        (quarantined and held ones too)."""
        return {
            path: router.pending_sync + router.quarantined
            for path, router in self.adopted.items()
            if router.active is not None
        }

    def files(self) -> list[AdoptedFile]:
        """Each adopted file still held, and what waits in it (for `health`)."""
        found = []
        for path, router in sorted(self.adopted.items()):
            error = self._errors.get(path)
            if error is None and not router.serving:
                error = router.primary.last_error
            pending, quarantined = self._waiting(path, router)
            found.append(
                AdoptedFile(
                    path=path,
                    since=self._since.get(path) or clock.now(),
                    pending_sync=pending,
                    quarantined=quarantined,
                    last_error=error,
                )
            )
        return found

    def _waiting(self, path: Path, router: FallbackRouter) -> tuple[int, int]:
        """The writes waiting in an adopted file, and those of them quarantined: its
        journal's, once read (`open`); before, or with its open cut short, what the scan
        counted."""
        if path in self._read:
            return router.pending_sync, router.quarantined
        return self._sizes.get(path, (0, 0))[0], 0

    def poke(self) -> None:
        """Look for files to adopt and move the adopted ones on, in the background: one
        round at a time (a poke while one runs is answered by it)."""
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.create_task(self._round(), name="fallback-adoption")

    async def settle(self, grace: float) -> None:
        """Before closing: look for no more files, and let the adopted ones' copy-back go
        on for at most `grace` seconds (the round under way, then one more step of each
        file still held); what is not copied by then stays in its file (`close`)."""
        self._closed = True  # no round starts, nor a file is adopted, from here on
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        task = self._task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=grace)
            if not task.done():
                return
        left = deadline - loop.time()
        if not self.adopted or left <= 0:
            return
        # A file adopted while the database was down, or whose copy stopped: one more try.
        self._task = asyncio.create_task(self._advance_all(), name="fallback-adoption")
        await asyncio.wait({self._task}, timeout=left)

    async def close(self) -> None:
        """Stop looking; release every adopted file as it is (what still waits in one
        stays there for the next server). A copy-back under way is cut short: what it
        copied is removed from the file, the rest is copied again by the next server
        with a restart's late-copy semantics (nothing newer rolled back)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with self._found_lock:  # a scan on its thread still may find one
            found, self._found = self._found, []
        for store in found:
            try:
                store.close()
            except Exception:  # its lock is released all the same (`OutageFile.close`)
                log.exception("closing the fallback file %s found to adopt", store.path)
        adopted, self.adopted = self.adopted, {}
        for path, router in adopted.items():  # one's failed close holds up no other
            try:
                await router.close()
            except Exception:
                log.exception("closing the adopted fallback file %s", path)
            pending, quarantined = self._waiting(path, router)
            if pending or quarantined:
                log.warning(
                    "closing with the adopted fallback file %s not copied back: %d outage "
                    "writes (%d quarantined) wait in it for the next server",
                    path,
                    pending,
                    quarantined,
                )
        self._read.clear()

    async def _round(self) -> None:
        await self._advance_all()
        if self.serving() and not self._closed:
            await self._step("looking for a dead replica's fallback file", self._look(), None)

    async def _advance_all(self) -> None:
        for path, router in list(self.adopted.items()):  # one's trouble holds up no other
            await self._step(
                f"moving the adopted fallback file {path} on", self._advance(path, router), path
            )

    async def _look(self) -> None:
        await asyncio.to_thread(self._scan)
        while self._found and not self._closed:  # `settle` adopts no more
            with self._found_lock:
                store = self._found.pop(0)
            path = store.path
            await self._step(f"adopting the fallback file {path}", self._adopt(store), path)

    async def _step(self, what: str, work: Coroutine[Any, Any, None], path: Path | None) -> None:
        """Run `work`; its failure logged once while it fails the same way each probe, and
        kept for `health` (the file's, and the last adoption's)."""
        try:
            await work
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if path is not None and path in self.adopted:
                self._errors[path] = error
            entries, threads = (0, 0) if path is None else self._sizes.get(path, (0, 0))
            self.last = Adoption(path, clock.now(), entries, threads, error)
            if self._failing.get(what) == repr(exc):
                log.debug("%s failed again: %s", what, exc)
            else:
                self.failures += 1  # a new failure, not each probe's look at it again
                self._failing[what] = repr(exc)
                log.exception("%s failed: tried again later", what)
        else:
            self._failing.pop(what, None)
            if path is not None:
                self._errors.pop(path, None)

    def _scan(self) -> None:
        """Lock each other file of the setting's names a dead process left entries of
        this database in (on a thread: it reads the files)."""
        primary = self.config.describe()
        for path in siblings(self.base, self.taken):
            if path in self.adopted or self._closed:
                continue
            journal = path.with_name(path.name + ".entries")
            if path in self._unchanged and self._unchanged[path] == _signature(journal):
                continue
            store = OutageFile.orphan(path, primary, left=self._left_alone)
            if path in self._left_now:  # its size and time after the look closed it
                self._left_now.discard(path)
                self._unchanged[path] = _signature(journal)
            if store is None:
                continue
            self._sizes[path] = store.counts()
            with self._found_lock:
                if not self._closed:
                    self._found.append(store)
                    continue
            store.close()

    def _left_alone(self, path: Path, why: str) -> None:
        self._left_now.add(path)
        if (path, why) not in self._left:  # each probe looks again: said once
            self._left.add((path, why))
            log.warning("fallback file %s is not adopted: %s", path, why)

    async def _adopt(self, store: OutageFile) -> None:
        path = store.path
        entries, threads = self._sizes.get(path, (0, 0))
        log.warning(
            "adopting the fallback file %s of a process that is gone: %d outage writes "
            "on %d threads, copied into the database once it answers",
            path,
            entries,
            threads,
        )
        try:
            router = _router_for(self.config, store)
        except BaseException:  # its lock goes with it: the next look adopts it again
            store.close()
            raise
        self.adopted[path] = router
        self._since[path] = clock.now()
        try:
            await router.open()
            self._read.add(path)
        except Exception:  # released as it is: the next look adopts it again
            # (Cancelled, by `close`: it stays adopted, for `close` to release and to name
            # with what waits in it.)
            del self.adopted[path]
            self._since.pop(path, None)
            await router.close()
            raise
        await self._advance(path, router)

    async def _advance(self, path: Path, router: FallbackRouter) -> None:
        """Probe; the database answering, copy back. Once nothing waits: released."""
        if not router.serving or router.pending_sync or router.quarantined:
            await router.check()
        if router.serving and not router.pending_sync and not router.quarantined:
            if router.untidy:  # the file could not be emptied: tried at each probe
                return
            await router.close()  # once the file's disk is given back: its lock with it
            del self.adopted[path]  # after: a `close` meanwhile closes it whole
            self._read.discard(path)
            self._since.pop(path, None)
            entries, threads = self._sizes.pop(path, (0, 0))
            self.last = Adoption(path, clock.now(), entries, threads, None)
            self.copied += 1
            log.warning(  # the outage's end, for the file: as a restart's is logged
                "adopted fallback file %s: its %d outage writes on %d threads are in the "
                "database; the file is emptied and free for another server",
                path,
                entries,
                threads,
            )


def _signature(journal: Path) -> tuple[int, int]:
    try:
        found = journal.stat()
    except OSError:
        return (0, 0)
    return found.st_size, found.st_mtime_ns


def _router_for(config: CheckpointerConfig, store: OutageFile) -> FallbackRouter:
    """A router on an adopted file, as a restart on it would open one, the primary on a
    small pool of its own."""
    primary = config.with_options(
        pool_min_size=0, pool_max_size=min(_POOL_MAX, config.pool_max_size)
    )
    fallback = create_sqlite_checkpointer(
        str(store.path.resolve()), sqlite_cache_kib=config.sqlite_cache_kib
    )
    slots = [
        BackendSlot("primary", primary),
        BackendSlot("fallback", fallback),
        BackendSlot("emergency", create_memory_checkpointer()),
    ]
    return FallbackRouter(
        slots,
        Metrics(),
        journal_limit=config.max_pending_sync,
        probe_interval=config.health_check_interval,
        store=store,
        adopted=True,
    )
