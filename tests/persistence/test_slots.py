"""BoundedCalls: a backend call's deadline is judged on the event loop's own time."""

from __future__ import annotations

import asyncio
import time

import pytest

from code_hero.persistence.slots import BoundedCalls


async def answer_soon() -> int:
    await asyncio.sleep(0.05)
    return 42


async def test_a_call_the_process_itself_held_up_is_given_its_time_again() -> None:
    calls = BoundedCalls()
    waiting = asyncio.create_task(calls.run(answer_soon(), 0.2, "probe", forgive_stalls=True))
    await asyncio.sleep(0)  # the call and its wait have started
    time.sleep(0.8)  # noqa: ASYNC251 (the point: CPU-bound work holding the loop past the deadline)
    assert await waiting == 42
    await calls.close()


async def test_other_calls_keep_their_bound_whatever_held_the_loop() -> None:
    calls = BoundedCalls()  # the copy-back's gated steps, the shutdown's grace
    waiting = asyncio.create_task(calls.run(answer_soon(), 0.2, "the copy-back"))
    await asyncio.sleep(0)
    time.sleep(0.8)  # noqa: ASYNC251
    with pytest.raises(TimeoutError, match="the copy-back timed out"):
        await waiting
    await calls.close()


async def test_a_call_that_does_not_answer_times_out() -> None:
    calls = BoundedCalls()
    never = asyncio.Event()
    with pytest.raises(TimeoutError, match=r"probe timed out after 0\.1 s"):
        await calls.run(never.wait(), 0.1, "probe")
    await calls.close()
