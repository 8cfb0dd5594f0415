"""Closing the gateway: every resource closes, in order, whatever the copy-back does.

The closing copies an outage's writes back (`settle`), then closes webhooks, the bus
and the manager. A recovery's notice to the other replicas goes out on the bus: it
must be sent before the bus closes; and a copy-back cancelled (a second SIGTERM, a
test's timeout) must not leave the rest open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from code_hero.gateway import Gateway


async def test_the_recovery_notice_goes_out_before_the_bus_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str] = []
    async with Gateway() as gw:
        bus, close = gw.bus, gw.bus.close

        async def send_control(message: str) -> None:
            for _ in range(20):  # a bus message takes a few turns of the loop (a round trip)
                await asyncio.sleep(0.01)
            order.append(f"sent {message}")

        async def closed() -> None:
            order.append("bus closed")
            await close()

        monkeypatch.setattr(bus, "send_control", send_control)
        monkeypatch.setattr(bus, "close", closed)
        for recovered in gw.manager.router.on_recovered:  # as a copy-back's switch calls them
            recovered()
    assert [o.split()[0] for o in order] == ["sent", "bus"]


async def test_a_cancelled_copy_back_still_closes_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def settle(grace: float) -> bool:
        await asyncio.Event().wait()  # a copy-back under way
        return False

    assert await _closed_when_cancelled_in(monkeypatch, "settle", settle) == ["bus", "manager"]


async def test_a_cancel_during_the_notices_wait_still_closes_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def notices_sent() -> None:
        await asyncio.Event().wait()  # a notice to the other replicas under way

    closed = await _closed_when_cancelled_in(monkeypatch, "_notices_sent", notices_sent)
    assert closed == ["bus", "manager"]


async def _closed_when_cancelled_in(
    monkeypatch: pytest.MonkeyPatch, step: str, waits: Callable[..., Awaitable[object]]
) -> list[str]:
    """What closes when a gateway's closing is cancelled while in `step` (the manager's
    `settle`, or the services' `_notices_sent`), made to wait for ever by `waits`."""
    gw = Gateway()
    await gw.__aenter__()
    closed: list[str] = []
    reached = asyncio.Event()
    bus_close, cleanup = gw.bus.close, gw.manager.cleanup

    async def waiting(*args: object) -> object:
        reached.set()
        return await waits(*args)

    async def bus_closed() -> None:
        closed.append("bus")
        await bus_close()

    async def cleaned_up() -> None:
        closed.append("manager")
        await cleanup()

    owner = gw.manager if step == "settle" else gw.services
    monkeypatch.setattr(owner, step, waiting)
    monkeypatch.setattr(gw.bus, "close", bus_closed)
    monkeypatch.setattr(gw.manager, "cleanup", cleaned_up)
    closing = asyncio.ensure_future(gw.__aexit__(None, None, None))
    await reached.wait()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    return closed
