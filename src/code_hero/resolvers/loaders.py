"""DataLoaders for look-ups that repeat within one GraphQL operation.

A page of runs resolving `thread` is one `get_threads` call, not one per run;
`thread(id:)` asks the gateway (which checks the id) and primes the cache.
`checkpoint` loads checkpoints by (thread, namespace, id): the parents a page
of history lacks for `changes`, one gateway call per thread and namespace.
The loaders cache records, not schema types, and live for one operation only
(see `Context.for_operation`): a WebSocket connection runs many operations
and must not serve one operation's stale records to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from itertools import groupby
from typing import TYPE_CHECKING

from strawberry.dataloader import DataLoader

from code_hero.auth import Caller
from code_hero.persistence.checkpoints import CheckpointView
from code_hero.persistence.records import ThreadRecord

if TYPE_CHECKING:
    from code_hero.gateway import Gateway
    from code_hero.runs.interrupts import PendingInterrupt

__all__ = ["CheckpointKey", "Loaders"]

CheckpointKey = tuple[str, str, str]
"""(thread id, namespace, checkpoint id)."""


class Loaders:
    """The loaders of one operation, for its caller."""

    def __init__(self, gateway: Gateway, caller: Caller) -> None:
        self.gateway = gateway
        self.caller = caller
        self._known_threads: dict[str, ThreadRecord] = {}

    # Each loader is made when first used: most operations use one or none.
    @cached_property
    def thread(self) -> DataLoader[str, ThreadRecord | None]:
        loader: DataLoader[str, ThreadRecord | None] = DataLoader(self._threads)
        loader.prime_many(self._known_threads)
        self._known_threads.clear()
        return loader

    def prime_threads(self, records: Sequence[ThreadRecord]) -> None:
        """Records the `thread` loader answers from its cache (the first record of an id wins,
        as `prime` does); kept aside until the loader is first used.

        A page of threads primes every record, and most pages never look a thread up
        again: a loader and a future per record for nothing (a fiftieth of a thread
        list page's instructions; callgrind).
        """
        if "thread" in self.__dict__:  # made already: primed as before
            for record in records:
                self.thread.prime(record.thread_id, record)
            return
        for record in records:
            self._known_threads.setdefault(record.thread_id, record)

    @cached_property
    def latest_checkpoint(self) -> DataLoader[str, CheckpointView | None]:
        return DataLoader(self._latest_checkpoints)

    @cached_property
    def checkpoint(self) -> DataLoader[CheckpointKey, CheckpointView | None]:
        return DataLoader(self._checkpoints)

    @cached_property
    def interrupts(self) -> DataLoader[str, list[PendingInterrupt]]:
        return DataLoader(self._interrupts)

    async def _threads(self, ids: Sequence[str]) -> list[ThreadRecord | None]:
        found = await self.gateway.get_threads(ids, caller=self.caller)
        return [found.get(i) for i in ids]

    async def _latest_checkpoints(self, thread_ids: Sequence[str]) -> list[CheckpointView | None]:
        # No batch read exists for "latest of each thread"; the loader still
        # makes `values` and `latestCheckpoint` of one thread a single read.
        found = await self.gateway.latest_checkpoints(thread_ids, caller=self.caller)
        return [found.get(t) for t in thread_ids]

    async def _checkpoints(self, keys: Sequence[CheckpointKey]) -> list[CheckpointView | None]:
        found: dict[CheckpointKey, CheckpointView] = {}
        for (thread_id, namespace), group in groupby(sorted(keys), key=lambda k: k[:2]):
            views = await self.gateway.get_checkpoints(
                thread_id, [k[2] for k in group], namespace, caller=self.caller
            )
            found.update({(thread_id, namespace, i): v for i, v in views.items()})
        return [found.get(k) for k in keys]

    async def _interrupts(self, thread_ids: Sequence[str]) -> list[list[PendingInterrupt]]:
        # A page of INTERRUPTED threads: one registry query for their runs, then one
        # state read per thread on graphs compiled at start-up.
        found = await self.gateway.pending_interrupts(thread_ids, caller=self.caller)
        return [found.get(t, []) for t in thread_ids]
