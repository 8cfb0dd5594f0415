"""Webhooks and the durable outbox of their deliveries, on the dialect seam.

The outbox rows are computed in SQL, in the transaction that records what they
tell of: `_run_end_inserts` (run by `finish_run`) insert one PENDING
delivery per webhook that wants the event, whose owner owns the run's thread
(or that an administrator made), and whose run filter matches: the filter's
fields (threadId, status, graph, userId) are columns compared in the same
`INSERT ... SELECT`, so no webhook is read into Python on a run's end. The
run's own URL (`RUN_WEBHOOK_KEY` in its config) adds one more. A thread's
deletion does the same for THREAD_DELETED (`_enqueue_thread_deleted`, filter
on threadId only). Committed rows wake this process's delivery worker.

A run-end delivery's id is derived from (run, event, webhook) and inserted
with ON CONFLICT DO NOTHING: a run's end written twice (a FinishRun replayed
after its acknowledgement was lost, a thread born in an outage copied again)
queues each message once, and the receiver sees one `webhook-id`.

Deliveries are claimed as runs are: a lease, rows another claimer locked
skipped (PostgreSQL `FOR UPDATE SKIP LOCKED`), so one replica attempts each;
a claim whose replica died lapses with its lease and is attempted again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from code_hero.errors import BadInputError
from code_hero.persistence.records import Page, RunOrder, RunRecord, RunStatus
from code_hero.persistence.registry.cursors import decode_cursor, delivery_cursor
from code_hero.persistence.registry.dialect import Dialect, Row, Session, dumps, utc, utc_now
from code_hero.persistence.webhooks import (
    RUN_EVENT_OF,
    RUN_WEBHOOK_KEY,
    Claim,
    DeliveryFilter,
    DeliveryRecord,
    DeliveryStatus,
    WebhookEvent,
    WebhookRecord,
    event_list,
    events_of,
)

__all__ = ["WebhookOutbox"]

WEBHOOK_CAP_LOCK = 0x7765_6268  # the advisory lock class of a user's webhook creations
_WEBHOOK_COLUMNS = (
    "webhook_id, user_id, all_users, url, events, secret, filter_thread_id, "
    "filter_status, filter_graph, filter_user_id, created_at"
)
_INSERTED = (
    "delivery_id, webhook_id, user_id, run_id, thread_id, event, url, payload, status, "
    "attempts, created_at, next_attempt_at"
)
_DELIVERY_NAMES = (
    "delivery_id",
    "webhook_id",
    "user_id",
    "run_id",
    "thread_id",
    "event",
    "url",
    "payload",
    "status",
    "attempts",
    "created_at",
    "last_status_code",
    "last_error",
    "delivered_at",
    "next_attempt_at",
)
_DELIVERY_COLUMNS = ", ".join(f"d.{column}" for column in _DELIVERY_NAMES)
_OWNER = "(SELECT t.user_id FROM code_hero_threads t WHERE t.thread_id = ?)"
# The most delivery inserts `_enqueue_run_ends` puts in one statement: 13 parameters
# each (14 with a run's own URL), so ~2,600 a statement, and a sum of 200 counts.
_INSERTS_A_STATEMENT = 200


class WebhookOutbox(Dialect):
    """The `WebhookStore` half of the registry (see `persistence/webhooks.py`)."""

    def on_enqueue(self, wake: Callable[[], None]) -> None:
        # Kept on the instance without an __init__ of its own: the dialects have theirs.
        self.__dict__.setdefault("_outbox_wakers", set()).add(wake)

    def _outbox_committed(self) -> None:
        """Deliveries were committed: the workers listening in this process start now."""
        for wake in tuple(self.__dict__.get("_outbox_wakers", ())):
            wake()

    # --- the enqueue hooks, inside the caller's transaction -----------------

    async def _enqueue_run_end(self, s: Session, run: RunRecord, *, last: bool = False) -> int:
        """Outbox rows for a run that just ended; how many. `last`: no statement of the
        session follows (the COMMIT goes with the last insert, `Session`)."""
        queued = 0
        inserts = self._run_end_inserts(run)
        for index, (sql, params) in enumerate(inserts):
            queued += await s.execute(sql, params, last=last and index == len(inserts) - 1)
        return queued

    async def _enqueue_run_ends(
        self, s: Session, runs: Sequence[RunRecord], *, last: bool = False
    ) -> int:
        """`_enqueue_run_end` of several runs; with writable CTEs (PostgreSQL) up to
        `_INSERTS_A_STATEMENT` inserts a statement, so an outage's copy of a thread's
        runs commits them in few trips."""
        inserts = [insert for run in runs for insert in self._run_end_inserts(run)]
        if len(inserts) < 2 or not self.writable_ctes:
            queued = 0
            for index, (sql, params) in enumerate(inserts):
                queued += await s.execute(sql, params, last=last and index == len(inserts) - 1)
            return queued
        # Bounded: one statement of them all was past PostgreSQL's 65,535 parameters at
        # ~5,000 runs (libpq refuses it unsent, an error taken for an outage) and its sum
        # of counts past max_stack_depth at ~3,600 (StatementTooComplex).
        queued = 0
        for start in range(0, len(inserts), _INSERTS_A_STATEMENT):
            chunk = inserts[start : start + _INSERTS_A_STATEMENT]
            ctes = ", ".join(f"e{n} AS ({sql} RETURNING 1)" for n, (sql, _) in enumerate(chunk))
            counts = " + ".join(f"(SELECT count(*) FROM e{n})" for n in range(len(chunk)))
            params = [value for _, values in chunk for value in values]
            final = last and start + _INSERTS_A_STATEMENT >= len(inserts)
            rows = await s.fetch(f"WITH {ctes} SELECT {counts} AS queued", params, last=final)
            queued += int(rows[0]["queued"])
        return queued

    def _run_end_inserts(self, run: RunRecord) -> list[tuple[str, list[Any]]]:
        """The `INSERT ... SELECT`s of a run's end deliveries, with their parameters
        (PostgreSQL runs one with the thread's update, in `finish_run`)."""
        event = RUN_EVENT_OF.get(RunStatus(run.status))
        if event is None:
            return []
        payload = dumps(
            {
                "event": event.value,
                "runId": run.run_id,
                "threadId": run.thread_id,
                "graph": run.graph,
                "status": RunStatus(run.status).value,
                "error": run.error,
                "userId": run.user_id,
                "createdAt": _iso(run.created_at),
                "startedAt": _iso(run.started_at),
                "finishedAt": _iso(run.finished_at),
            }
        )
        now = self._ts(utc_now())
        prefix = _run_end_prefix(run.run_id, event)
        subscribed, pattern = self._subscribed("w.events", event.value)
        inserts: list[tuple[str, list[Any]]] = []
        inserts.append(
            (
                f"INSERT INTO code_hero_webhook_deliveries ({_INSERTED}) "
                "SELECT ? || w.webhook_id, w.webhook_id, w.user_id, ?, ?, ?, w.url, ?, "
                f"'PENDING', 0, ?, ? FROM code_hero_webhooks w WHERE {subscribed} "
                f"AND (w.all_users OR w.user_id = {_OWNER}) "
                "AND (w.filter_thread_id IS NULL OR w.filter_thread_id = ?) "
                "AND (w.filter_status IS NULL OR w.filter_status = ?) "
                "AND (w.filter_graph IS NULL OR w.filter_graph = ?) "
                "AND (w.filter_user_id IS NULL OR w.filter_user_id = ?) "
                "ON CONFLICT (delivery_id) DO NOTHING",
                [
                    prefix,
                    run.run_id,
                    run.thread_id,
                    event.value,
                    payload,
                    now,
                    now,
                    *pattern,
                    run.thread_id,
                    run.thread_id,
                    RunStatus(run.status).value,
                    run.graph,
                    run.user_id,
                ],
            )
        )
        url = run.config.get(RUN_WEBHOOK_KEY)
        if isinstance(url, str) and url:
            inserts.append(
                (
                    f"INSERT INTO code_hero_webhook_deliveries ({_INSERTED}) "
                    # WHERE: SQLite needs one before ON CONFLICT after an INSERT ... SELECT.
                    f"SELECT ?, NULL, {_OWNER}, ?, ?, ?, ?, ?, 'PENDING', 0, ?, ? WHERE 1 = 1 "
                    "ON CONFLICT (delivery_id) DO NOTHING",
                    [
                        f"{prefix}run",
                        run.thread_id,
                        run.run_id,
                        run.thread_id,
                        event.value,
                        url,
                        payload,
                        now,
                        now,
                    ],
                )
            )
        return inserts

    async def _enqueue_thread_deleted(self, s: Session, thread_id: str) -> int:
        """Outbox rows for a thread about to be deleted (its row still there); how many."""
        sql, params = self._thread_deleted_insert(thread_id)
        return await s.execute(sql, params)

    def _thread_deleted_delivery(self, thread_id: str) -> tuple[datetime, list[Any]]:
        """When a thread is deleted (now), and its THREAD_DELETED deliveries' id prefix,
        event, payload and the webhooks' `events` pattern it matches (PostgreSQL's
        `code_hero_purge_thread` takes them as they are)."""
        at = utc_now()
        event = WebhookEvent.THREAD_DELETED.value
        payload = dumps({"event": event, "threadId": thread_id, "deletedAt": at.isoformat()})
        return at, [_message_prefix(), event, payload, f"%,{event},%"]

    def _thread_deleted_insert(self, thread_id: str) -> tuple[str, list[Any]]:
        """The `INSERT ... SELECT` of a thread's THREAD_DELETED deliveries, and its
        parameters (`code_hero_purge_thread`, a PostgreSQL migration, has its copy)."""
        at, (prefix, event, payload, _) = self._thread_deleted_delivery(thread_id)
        subscribed, pattern = self._subscribed("w.events", event)
        sql = (
            f"INSERT INTO code_hero_webhook_deliveries ({_INSERTED}) "
            "SELECT ? || w.webhook_id, w.webhook_id, w.user_id, NULL, t.thread_id, ?, w.url, ?, "
            "'PENDING', 0, ?, ? FROM code_hero_webhooks w JOIN code_hero_threads t "
            "ON t.thread_id = ? AND (w.all_users OR w.user_id = t.user_id) "
            f"WHERE {subscribed} AND (w.filter_thread_id IS NULL OR w.filter_thread_id = ?)"
        )
        params = [prefix, event, payload, self._ts(at), self._ts(at), thread_id, *pattern]
        params.append(thread_id)
        return sql, params

    # --- webhooks -----------------------------------------------------------

    async def create_webhook(
        self, webhook: WebhookRecord, secret: str, *, limit: int | None = None
    ) -> bool:
        values = [
            webhook.webhook_id,
            webhook.user_id,
            webhook.all_users,
            webhook.url,
            event_list(webhook.events),
            secret,
            webhook.thread_id,
            None if webhook.status is None else RunStatus(webhook.status).value,
            webhook.graph,
            webhook.run_user_id,
            self._ts(utc(webhook.created_at)),
        ]
        placeholders = ", ".join("?" for _ in values)
        insert = f"INSERT INTO code_hero_webhooks ({_WEBHOOK_COLUMNS}) SELECT {placeholders}"
        if limit is not None:  # counted in the insert itself
            insert += " WHERE (SELECT count(*) FROM code_hero_webhooks WHERE user_id = ?) < ?"
            values += [webhook.user_id, limit]
        async with (
            self._unique(f"a webhook with id {webhook.webhook_id!r}"),
            self._session(atomic=True) as s,
        ):
            if limit is not None and self.webhook_cap_lock is not None:
                # One creation per user at a time: the count is taken after the lock,
                # so two creations cannot both see room for one (SQLite: one writer
                # at a time anyway).
                await s.execute(self.webhook_cap_lock, [WEBHOOK_CAP_LOCK, webhook.user_id])
            added = await s.execute(insert, values)
        return added > 0

    async def delete_webhook(self, webhook_id: str, *, user_id: str | None) -> bool:
        sql, params = "DELETE FROM code_hero_webhooks WHERE webhook_id = ?", [webhook_id]
        if user_id is not None:
            sql, params = f"{sql} AND user_id = ?", [webhook_id, user_id]
        async with self._session() as s:
            return await s.execute(sql, params) > 0

    async def list_webhooks(self, *, user_id: str | None) -> list[WebhookRecord]:
        sql, params = f"SELECT {_WEBHOOK_COLUMNS} FROM code_hero_webhooks", []
        if user_id is not None:
            sql, params = f"{sql} WHERE user_id = ?", [user_id]
        async with self._session() as s:
            rows = await s.fetch(f"{sql} ORDER BY created_at, webhook_id", params)
        return [self._webhook(row) for row in rows]

    # --- deliveries ---------------------------------------------------------

    def _delivery_where(self, flt: DeliveryFilter) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("d.user_id", flt.user_id),
            ("d.webhook_id", flt.webhook_id),
            ("d.run_id", flt.run_id),
            ("d.status", None if flt.status is None else DeliveryStatus(flt.status).value),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return clauses, params

    async def list_deliveries(
        self, flt: DeliveryFilter, *, first: int, after: str | None = None
    ) -> Page[DeliveryRecord]:
        if first < 0:
            raise BadInputError(f"first must not be negative, got {first}")
        clauses, params = self._delivery_where(flt)
        if after is not None:
            at, key = decode_cursor("delivery", after, RunOrder())
            clauses.append("(d.created_at, d.delivery_id) < (?, ?)")
            params.extend([self._ts(at), key])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT {_DELIVERY_COLUMNS} FROM code_hero_webhook_deliveries d {where} "
                "ORDER BY d.created_at DESC, d.delivery_id DESC LIMIT ?",
                [*params, first + 1],
            )
        items = [self._delivery(row) for row in rows[:first]]
        end = delivery_cursor(items[-1].created_at, items[-1].delivery_id) if items else None
        return Page(items=items, end_cursor=end, has_next_page=len(rows) > first)

    async def count_deliveries(self, flt: DeliveryFilter) -> int:
        clauses, params = self._delivery_where(flt)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._session() as s:
            rows = await s.fetch(
                f"SELECT count(*) AS n FROM code_hero_webhook_deliveries d {where}", params
            )
        return int(rows[0]["n"])

    async def claim_deliveries(
        self, owner: str, *, now: datetime, until: datetime, limit: int
    ) -> Claim:
        if limit < 1:
            return Claim([], None)
        ts_now = self._ts(utc(now))
        claim = (
            "UPDATE code_hero_webhook_deliveries SET lease_owner = ?, lease_expires_at = ? "
            "WHERE delivery_id IN (SELECT r.delivery_id FROM code_hero_webhook_deliveries r "
            "  WHERE r.status = 'PENDING' AND r.next_attempt_at <= ? "
            "  AND (r.lease_expires_at IS NULL OR r.lease_expires_at < ?) "
            # The dialect's SKIP LOCKED names the alias `r` (it was written for runs).
            f"  ORDER BY r.next_attempt_at, r.delivery_id LIMIT ?{self.skip_locked}"
            ") AND (lease_expires_at IS NULL OR lease_expires_at < ?) RETURNING "
        )
        params = [owner, self._ts(utc(until)), ts_now, ts_now, limit, ts_now]
        # When the rest can next be claimed, in two reads of the due index (the claim
        # runs at every enqueue and attempt's end: never a scan of all PENDING rows):
        # `held`, over the rows already due that this claim left (leased by another
        # claimer, maybe dead, or beyond its room: few), the later of the next try and
        # the lease's end; `later`, the first next try still to come.
        held = (
            "SELECT min(CASE WHEN h.lease_expires_at >= ? "
            f"THEN {self.greatest}(h.next_attempt_at, h.lease_expires_at) "
            "ELSE h.next_attempt_at END) FROM code_hero_webhook_deliveries h "
            "WHERE h.status = 'PENDING' AND h.next_attempt_at <= ?"
        )
        later = (
            "SELECT l.next_attempt_at FROM code_hero_webhook_deliveries l "
            "WHERE l.status = 'PENDING' AND l.next_attempt_at > ? "
            "ORDER BY l.next_attempt_at LIMIT 1"
        )
        due_params = [ts_now, ts_now, ts_now]
        if self.writable_ctes:
            # One statement leases the rows and returns them with the webhooks' secrets
            # and the next due time: autocommitted alone (no BEGIN, no COMMIT), so no
            # lease is committed without the rows that read it reaching us. At least one
            # row (the LEFT JOIN's): a claim that leased nothing answers its times.
            returned = ", ".join(f"c.{column}" for column in _DELIVERY_NAMES)
            async with self._session() as s:
                rows = await s.fetch(
                    f"WITH claimed AS ({claim}{', '.join(_DELIVERY_NAMES)}) "
                    f"SELECT n.held, n.later, {returned}, w.secret FROM (SELECT ({held} "
                    "AND h.delivery_id NOT IN (SELECT delivery_id FROM claimed)) AS held, "
                    f"({later}) AS later) n LEFT JOIN claimed c ON TRUE "
                    "LEFT JOIN code_hero_webhooks w ON w.webhook_id = c.webhook_id "
                    "ORDER BY c.next_attempt_at, c.delivery_id",
                    [*params, *due_params],
                    last=True,
                )
            next_due = self._earliest(rows[0]["held"], rows[0]["later"])
            deliveries = [self._delivery(row) for row in rows if row["delivery_id"] is not None]
            return Claim(deliveries, next_due)
        async with self._session(atomic=True) as s:
            ids = [row["delivery_id"] for row in await s.fetch(f"{claim}delivery_id", params)]
            cond, known = self._in("h.delivery_id", ids)
            (row,) = await s.fetch(
                f"SELECT ({held} AND NOT ({cond})) AS held, ({later}) AS later",
                [ts_now, ts_now, *known, ts_now],
                last=not ids,
            )
            next_due = self._earliest(row["held"], row["later"])
            if not ids:
                return Claim([], next_due)
            cond, known = self._in("d.delivery_id", ids)
            rows = await s.fetch(
                f"SELECT {_DELIVERY_COLUMNS}, w.secret FROM code_hero_webhook_deliveries d "
                "LEFT JOIN code_hero_webhooks w ON w.webhook_id = d.webhook_id "
                f"WHERE {cond} ORDER BY d.next_attempt_at, d.delivery_id",
                known,
                last=True,
            )
        return Claim([self._delivery(row) for row in rows], next_due)

    def _earliest(self, *stored: Any) -> datetime | None:
        """The earliest of stored timestamps that are not NULL (SQLite's min() of
        several is NULL when one is)."""
        times = [self._from_ts(value) for value in stored if value is not None]
        return min(times) if times else None

    async def delete_finished_deliveries(self, before: datetime, *, limit: int) -> int:
        if limit < 1:
            return 0
        async with self._session() as s:
            return await s.execute(
                "DELETE FROM code_hero_webhook_deliveries WHERE delivery_id IN ("
                "SELECT delivery_id FROM code_hero_webhook_deliveries "
                "WHERE created_at < ? AND status IN ('DELIVERED', 'FAILED') LIMIT ?)",
                [self._ts(utc(before)), limit],
            )

    async def record_attempt(
        self,
        delivery_id: str,
        owner: str,
        *,
        status: DeliveryStatus,
        status_code: int | None,
        error: str | None,
        next_attempt_at: datetime | None,
        at: datetime,
    ) -> bool:
        delivered = status is DeliveryStatus.DELIVERED
        async with self._session() as s:
            return (
                await s.execute(
                    "UPDATE code_hero_webhook_deliveries SET status = ?, "
                    "attempts = attempts + 1, last_status_code = ?, last_error = ?, "
                    "delivered_at = ?, next_attempt_at = ?, lease_owner = NULL, "
                    "lease_expires_at = NULL WHERE delivery_id = ? AND lease_owner = ?",
                    [
                        DeliveryStatus(status).value,
                        status_code,
                        error,
                        self._ts(utc(at)) if delivered else None,
                        None if next_attempt_at is None else self._ts(utc(next_attempt_at)),
                        delivery_id,
                        owner,
                    ],
                )
                > 0
            )

    # --- rows as records ----------------------------------------------------

    def _webhook(self, row: Row) -> WebhookRecord:
        return WebhookRecord(
            webhook_id=row["webhook_id"],
            user_id=row["user_id"],
            url=row["url"],
            events=events_of(row["events"]),
            created_at=self._from_ts(row["created_at"]),
            all_users=bool(row["all_users"]),
            thread_id=row["filter_thread_id"],
            status=None if row["filter_status"] is None else RunStatus(row["filter_status"]),
            graph=row["filter_graph"],
            run_user_id=row["filter_user_id"],
        )

    def _delivery(self, row: Row) -> DeliveryRecord:
        return DeliveryRecord(
            delivery_id=row["delivery_id"],
            webhook_id=row["webhook_id"],
            user_id=row["user_id"],
            run_id=row["run_id"],
            thread_id=row["thread_id"],
            event=WebhookEvent(row["event"]),
            url=row["url"],
            payload=row["payload"],
            status=DeliveryStatus(row["status"]),
            attempts=int(row["attempts"]),
            created_at=self._from_ts(row["created_at"]),
            last_status_code=row["last_status_code"],
            last_error=row["last_error"],
            delivered_at=self._from_ts_or_none(row["delivered_at"]),
            next_attempt_at=self._from_ts_or_none(row["next_attempt_at"]),
            secret=row.get("secret"),
        )


def _message_prefix() -> str:
    """A fresh prefix of the delivery ids one transaction writes (`msg_<hex>_<webhook>`)."""
    return f"msg_{uuid.uuid4().hex}_"


# The namespace of run-end delivery ids (uuid5): any fixed UUID, never to change,
# or a run's end replayed across an upgrade would be queued a second time.
_RUN_END = uuid.UUID("5b0f6f3e-8d0a-4a53-9f3c-6f4f2b7f1c20")


def _run_end_prefix(run_id: str, event: WebhookEvent) -> str:
    """The prefix of a run end's delivery ids: the same for the same run and event."""
    return f"msg_{uuid.uuid5(_RUN_END, f'{run_id}/{event.value}').hex}_"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
