"""The webhook delivery worker: claims due outbox rows, POSTs them signed, records each try.

`WebhookDispatcher` is an async context manager owned by the process's
services, beside the run executor. It claims due PENDING deliveries from the
primary registry's outbox with a lease (one replica attempts each; a dead
replica's claim lapses and another attempts it), POSTs the JSON body signed
as Standard Webhooks specify (`webhook-id`, `webhook-timestamp`,
`webhook-signature`, with the `standardwebhooks` package), and records the
attempt: a 2xx answer is DELIVERED; a timeout, a refused connection, a
refused destination, a redirect (never followed) or any other status is
tried again at the next offset of the retry schedule, then FAILED.

It wakes as soon as a transaction of this process commits deliveries
(`WebhookStore.on_enqueue`) and at each scheduled retry it set. Otherwise it
sleeps until the time its last claim said the next PENDING delivery can be
claimed (a retry's time, the end of a lease another replica holds), at most
`idle_poll` s (by default the lease): other replicas' new deliveries are theirs
to attempt first (their own wake-up is immediate, so a NOTIFY would add nothing
but a round trip), and if that replica dies before its first try this one
finds them within that cap. An idle gateway claims once a cap, not once a
second (one statement on PostgreSQL). The services wake it when the primary
serves again after an outage: a reopened primary is a new registry, whose
enqueues reach the worker only once a claim there registered it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING

from standardwebhooks import Webhook

from code_hero.errors import ConfigurationError
from code_hero.persistence import clock
from code_hero.persistence.unreachable import BackgroundLog
from code_hero.persistence.webhooks import DeliveryRecord, DeliveryStatus, WebhookStore
from code_hero.runs.destinations import Network, RefusedDestinationError, resolve

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_RETENTION",
    "DEFAULT_RETRY_SCHEDULE",
    "WebhookDispatcher",
    "WebhookSettings",
    "parse_schedule",
]

log = logging.getLogger(__name__)

DEFAULT_RETRY_SCHEDULE = (0.0, 5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
_ERROR_CHARS = 500  # of an error message kept with an attempt


def parse_schedule(raw: str | None) -> tuple[float, ...]:
    """`0,5,30` as seconds after the first try, ascending, one attempt at each."""
    if raw is None or not raw.strip():
        return DEFAULT_RETRY_SCHEDULE
    try:
        offsets = tuple(float(x) for x in raw.split(","))
    except ValueError:
        raise ConfigurationError(
            f"CODE_HERO_WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds, got {raw!r}"
        ) from None
    if any(x < 0 for x in offsets) or list(offsets) != sorted(offsets):
        raise ConfigurationError(
            f"CODE_HERO_WEBHOOK_RETRY_SCHEDULE must be ascending and not negative, got {raw!r}"
        )
    return offsets


DEFAULT_RETENTION = 7 * 24 * 3600.0  # seconds: a week of delivery history


@dataclass(frozen=True)
class WebhookSettings:
    """How webhooks are delivered, read once at the edge."""

    schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    allow: tuple[Network, ...] = ()  # destinations allowed although private or loopback
    timeout: float = 10.0  # seconds per attempt: connect, send and answer
    secret: str | None = None  # signs deliveries to a run's own URL (whsec_...)
    # Seconds between claims while the database is down or busy, or when a due delivery
    # was left to a claimer that had it locked.
    poll_interval: float = 1.0
    # The longest sleep with nothing due (another replica's new delivery waits at most
    # this if that replica dies before trying it). None: the lease, so that waits no
    # longer than a delivery whose claimer died waits for its lease to lapse.
    idle_poll: float | None = None
    concurrency: int = 16  # attempts in flight in this process
    retention: float = DEFAULT_RETENTION  # seconds a DELIVERED or FAILED delivery is kept

    @property
    def lease(self) -> timedelta:
        """How long a claim holds: well past an attempt's timeout."""
        return timedelta(seconds=2 * self.timeout + 5)

    @property
    def idle_cap(self) -> float:
        """Seconds the worker sleeps at most between claims, woken by nothing."""
        return self.lease.total_seconds() if self.idle_poll is None else self.idle_poll


async def _until_woken(wake: asyncio.Event, seconds: float) -> None:
    """Wait for `wake`, `seconds` at most."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):  # no task per wait
            await wake.wait()


class WebhookDispatcher:
    """Delivers the outbox of the registry `store_of()` returns (None while it is down);
    `level_of` is the level a failed claim or record is logged at (the router's
    `background_level`: DEBUG in an outage, WARNING when busy; by default WARNING);
    `wait(event, seconds)` is how the loop sleeps between claims (tests drive time)."""

    def __init__(
        self,
        store_of: Callable[[], WebhookStore | None],
        settings: WebhookSettings | None = None,
        *,
        owner: str | None = None,
        level_of: Callable[[BaseException], int] = lambda exc: logging.WARNING,
        wait: Callable[[asyncio.Event, float], Awaitable[None]] = _until_woken,
    ) -> None:
        self._wait = wait
        self._failures = BackgroundLog(log, level_of)
        self.settings = settings or WebhookSettings()
        self.owner = owner or f"webhooks-{uuid.uuid4().hex[:12]}"
        self._store_of = store_of
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._attempts: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    async def __aenter__(self) -> WebhookDispatcher:
        self._loop_task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop claiming; attempts in flight are cancelled (their leases lapse: retried)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        tasks = [t for t in (self._loop_task, *self._attempts) if t is not None]
        # Forgotten first: the loop ends at its next turn even if an await drops the
        # cancel (Python 3.11's wait_for, in psycopg_pool's getconn).
        self._loop_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """Look for due deliveries now."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Attempts under way in this process."""
        return len(self._attempts)

    # ---------------------------------------------------------------- the loop
    async def _run(self) -> None:
        while self._loop_task is asyncio.current_task():
            self._wake.clear()
            pause = self.settings.poll_interval
            try:
                pause = await self._claim()
            except Exception as exc:  # the database is down or busy: the poll tries again
                self._failures.failed(exc, "claiming webhook deliveries failed: %s", exc)
            if pause > 0:
                await self._wait(self._wake, pause)

    async def _claim(self) -> float:
        """Start attempts of what is due; the seconds to sleep before the next claim
        (0: more may be waiting)."""
        store = self._store_of()
        if store is None:
            return self.settings.poll_interval
        store.on_enqueue(self.wake)  # once per store (a set): the backend may be reopened
        room = self.settings.concurrency - len(self._attempts)
        if room < 1:
            return self.settings.idle_cap  # an attempt's end wakes the loop
        now = clock.now()
        claim = await store.claim_deliveries(
            self.owner, now=now, until=now + self.settings.lease, limit=room
        )
        if self._loop_task is not asyncio.current_task():
            # Closed while claiming (its cancel dropped): an attempt started now would
            # outlive `close` and its client. The leases lapse: delivered later.
            return self.settings.poll_interval
        for delivery in claim.deliveries:
            task = asyncio.get_running_loop().create_task(self._attempt(store, delivery))
            self._attempts.add(task)
            task.add_done_callback(self._attempt_done)
        if len(claim.deliveries) == room:
            return 0.0
        if claim.next_due is None:
            return self.settings.idle_cap
        due_in = (claim.next_due - clock.now()).total_seconds()
        if due_in <= 0:  # due, yet not claimed: another claimer had it locked
            return self.settings.poll_interval
        return min(due_in, self.settings.idle_cap)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._attempts.discard(task)
        self.wake()  # a slot is free

    def _wake_at(self, when: datetime) -> None:
        delay = max((when - clock.now()).total_seconds(), 0.0)
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self.wake()

        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    # ---------------------------------------------------------------- one attempt
    async def _attempt(self, store: WebhookStore, delivery: DeliveryRecord) -> None:
        code, error = await self._post(delivery)
        at = clock.now()
        attempt = delivery.attempts + 1  # the index of the next offset, too
        next_at: datetime | None = None
        if code is not None and 200 <= code < 300:
            status = DeliveryStatus.DELIVERED
        elif attempt < len(self.settings.schedule):
            status = DeliveryStatus.PENDING
            offset = timedelta(seconds=self.settings.schedule[attempt])
            next_at = max(delivery.created_at + offset, at)
        else:
            status = DeliveryStatus.FAILED
        try:
            held = await store.record_attempt(
                delivery.delivery_id,
                self.owner,
                status=status,
                status_code=code,
                error=None if error is None else error[:_ERROR_CHARS],
                next_attempt_at=next_at,
                at=at,
            )
        except Exception as exc:  # the lease lapses and another try is made
            self._failures.failed(
                exc,
                "recording webhook delivery %s failed: %s",
                delivery.delivery_id,
                exc,
            )
            return
        if not held:
            log.warning("webhook delivery %s was claimed again meanwhile", delivery.delivery_id)
        if next_at is not None:
            self._wake_at(next_at)

    async def _post(self, delivery: DeliveryRecord) -> tuple[int | None, str | None]:
        """POST once: (status code, error), either None. The whole attempt (resolving,
        connecting, sending, the answer's head) has `timeout` seconds; the body of the
        answer is never read. Whatever fails is the attempt's error, never the task's."""
        # httpx is imported by the first attempt, not with the module: a server that
        # never delivers a webhook does not load it (with its command line: rich,
        # pygments; 4 MiB resident).
        import httpx

        timeout = self.settings.timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._send(delivery)
        except TimeoutError:
            return None, f"timed out after {timeout:g} s"
        except RefusedDestinationError:
            # Not the address it resolved to: lastError is shown to the webhook's owner,
            # who must not learn what an internal name resolves to.
            return None, "refused destination: not a public address (see CODE_HERO_WEBHOOK_ALLOW)"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a URL the checks let through and the client refuses
            return None, f"{type(exc).__name__}: {exc}"

    def _http(self) -> httpx.AsyncClient:
        """The HTTP client, made at the first attempt: its TLS context (the CA bundle,
        ~2 MiB resident) is not paid for by a process that never delivers a webhook."""
        if self._client is None:
            import httpx

            # No keep-alive: each attempt connects to the address it checked, and a pooled
            # connection (keyed by address) must never carry another host's request.
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=self.settings.timeout,
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._client

    async def _send(self, delivery: DeliveryRecord) -> tuple[int | None, str | None]:
        import httpx

        signature = self._signature(delivery)
        if "webhook-signature" not in signature:
            return None, "no signing secret (CODE_HERO_WEBHOOK_SECRET): not sent unsigned"
        target = await resolve(delivery.url, self.settings.allow)
        headers = {"content-type": "application/json", **signature}
        name = target.host if target.host.isascii() else target.host.encode("idna").decode("ascii")
        host = name if ":" not in name else f"[{name}]"
        default = 443 if target.scheme == "https" else 80
        headers["host"] = host if target.port == default else f"{host}:{target.port}"
        url = httpx.URL(delivery.url).copy_with(host=str(target.address), port=target.port)
        # Connect to the checked address; TLS names and verifies the URL's host (SNI).
        extensions = {"sni_hostname": name} if target.scheme == "https" else {}
        client = self._http()
        request = client.build_request(
            "POST", url, content=delivery.payload.encode(), headers=headers, extensions=extensions
        )
        answer = await client.send(request, stream=True)  # the body is never read
        await answer.aclose()
        code = answer.status_code
        if 300 <= code < 400:
            return code, f"redirect to {answer.headers.get('location')!r} not followed"
        if not 200 <= code < 300:
            return code, f"HTTP {code}"
        return code, None

    def _signature(self, delivery: DeliveryRecord) -> dict[str, str]:
        """The Standard Webhooks headers; unsigned when there is no secret to sign with."""
        # The receiver checks the timestamp against its own clock (NTP's, not the
        # database's): this process's own, as a token's expiry is read.
        now = clock.wall()
        headers = {
            "webhook-id": delivery.delivery_id,
            "webhook-timestamp": str(int(now.timestamp())),
        }
        secret = delivery.secret or (None if delivery.webhook_id else self.settings.secret)
        if secret:
            headers["webhook-signature"] = Webhook(secret).sign(
                delivery.delivery_id, now, delivery.payload
            )
        return headers
