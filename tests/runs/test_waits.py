"""The waits with no limit begun through one server, answered when it stops (runs/waits.py)."""

from __future__ import annotations

import asyncio

import pytest

from code_hero.errors import RunHeldUpError
from code_hero.gateway import Gateway
from code_hero.persistence.records import RunFilter, RunStatus
from code_hero.runs.executor import StartRun
from code_hero.runs.waits import Waits


async def test_a_stop_answers_its_own_waits_and_answered_follows_their_answers(
    gateway: Gateway,
) -> None:
    """Stopping one `Waits` answers the starts begun with it, at once and from then on,
    and none begun with another or with none; `answered` returns once the tasks that
    carry its answers have ended (a server closes its sockets only then)."""
    stopping, going = Waits(), Waits()
    told: list[str] = []

    async def start_and_answer(waits: Waits, delay: float) -> RunStatus:
        request = StartRun(graph="slow", input={"delay": delay}, wait=True)
        try:
            return (await gateway.start_run(request, waits=waits)).status
        except RunHeldUpError as exc:
            await asyncio.sleep(0)  # the answer's send
            told.append(str(exc.run_id))
            raise

    mine = asyncio.create_task(start_and_answer(stopping, 0.5))
    theirs = asyncio.create_task(start_and_answer(going, 0.3))
    running: list[object] = []
    while len(running) < 2:
        await asyncio.sleep(0.01)
        running = (await gateway.runs_page(RunFilter(status=RunStatus.RUNNING))).items
    gateway.stop_waiting(stopping)
    await stopping.answered()
    assert mine.done() and len(told) == 1  # answered, and its answer sent
    with pytest.raises(RunHeldUpError) as held:
        await mine
    assert held.value.extensions["retryAfter"] == 10
    with pytest.raises(RunHeldUpError):  # one begun from now on: at once
        await start_and_answer(stopping, 0)
    assert await theirs is RunStatus.SUCCESS  # the other's: to its run's end
    assert await start_and_answer(going, 0) is RunStatus.SUCCESS
    unscoped = StartRun(graph="slow", input={"delay": 0}, wait=True)
    assert (await gateway.start_run(unscoped)).status is RunStatus.SUCCESS


async def test_answered_follows_a_start_begun_before_the_stop_not_yet_waiting(
    gateway: Gateway,
) -> None:
    """A `startRun(wait)` begun before the stop but still admitting its run (ownership,
    the PENDING row, the claimers' wake-up) when the stop comes is answered at once
    when it reaches its wait; `answered` must follow its task too, else serve closes
    its WebSocket (1012) before that answer and the client never learns its run."""
    waits = Waits()
    request = StartRun(graph="slow", input={"delay": 5}, wait=True)
    begun = asyncio.create_task(gateway.start_run(request, waits=waits))
    await asyncio.sleep(0)  # begun: in start_run, not yet in the executor's wait
    assert not begun.done()
    gateway.stop_waiting(waits)
    await waits.answered()
    assert begun.done(), "answered() returned while a start begun before the stop went on"
    with pytest.raises(RunHeldUpError):
        await begun
