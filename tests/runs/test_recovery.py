"""A process killed mid-run (SIGKILL): the next process resumes the run, no step twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time

import pytest

from code_hero.config import (
    CheckpointerConfig,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
)
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from tests.runs.conftest import SLOW_SPEC

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from code_hero.config import config_from_url
    from code_hero.gateway import Gateway, GatewaySettings
    from code_hero.runs.executor import StartRun

    async def main():
        settings = GatewaySettings(
            checkpointer=config_from_url(sys.argv[1]), graphs={"slow": sys.argv[2]}, lease_seconds=1
        )
        async with Gateway(settings) as gw:
            run = await gw.start_run(StartRun(graph="slow", input={"delay": 0.4}))
            print("RUN", run.run_id, flush=True)
            async for event in await gw.follow_run(run.run_id):
                node = event.payload.get("node", "-")
                print("SEQ", event.seq, event.type, node, flush=True)
                if event.type == "node_update":
                    print("STEP", node, flush=True)
            print("ENDED", flush=True)

    asyncio.run(main())
    """
)


def _url(config: CheckpointerConfig) -> str:
    return config.connection_string or f"sqlite:///{config.database_path}"


@pytest.fixture(params=["sqlite", "postgres"])
def durable_config(request: pytest.FixtureRequest) -> CheckpointerConfig:
    if request.param == "sqlite":
        return create_sqlite_checkpointer(request.getfixturevalue("sqlite_path"))
    return create_postgres_checkpointer(request.getfixturevalue("pg_database"))


async def test_killed_process_run_is_resumed_exactly_once(
    durable_config: CheckpointerConfig,
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        _url(durable_config),
        SLOW_SPEC,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert child.stdout is not None
    run_id = ""
    seen: dict[int, tuple[str, str]] = {}  # what the child's subscriber saw, live
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await child.stdout.readline()).decode().split()
                if line and line[0] == "RUN":
                    run_id = line[1]
                if line and line[0] == "SEQ":
                    seen[int(line[1])] = (line[2], line[3])
                if line[:2] == ["STEP", "s2"]:
                    break
                assert line, "the child ended early"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        await child.wait()
    assert child.returncode == -signal.SIGKILL

    settings = GatewaySettings(
        checkpointer=durable_config, graphs={"slow": SLOW_SPEC}, lease_seconds=1
    )
    deadline = time.monotonic() + 20
    async with Gateway(settings) as gw:
        before = await gw.get_run(run_id)
        assert before is not None and before.status is RunStatus.RUNNING
        while gw.executor.is_active(run_id) is False and time.monotonic() < deadline:
            await gw.executor.recover()  # the dead child's lease lapses after a second
            await asyncio.sleep(0.2)
        done = await gw.executor.wait(run_id, limit=30)
        assert done.status is RunStatus.SUCCESS, done.error
        assert done.output["steps"] == [f"s{i}" for i in range(6)], "every step exactly once"
        events = await gw.run_events(run_id, first=1000)
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), "no gap in the stream"
        steps_seen = [e.payload["node"] for e in events if e.type == "node_update"]
        assert steps_seen[-3:] == ["s3", "s4", "s5"] and len(set(steps_seen)) == len(steps_seen)
        lost = [e.seq for e in events if e.type == "status" and e.payload["error"]]
        statuses = [e.payload["status"] for e in events if e.type == "status"]
        assert statuses[-1] == "SUCCESS" and statuses.count("RUNNING") == 2 + len(lost)
        # A seq the killed process published names that event still, or one saying it
        # was lost (its batch died unstored): never an event of the run resumed here. So
        # a subscriber that goes on after the last seq it saw misses none of those.
        assert seen and steps_seen[-3:] == ["s3", "s4", "s5"]
        for event in events:
            if event.seq in seen and event.seq not in lost:
                assert seen[event.seq] == (event.type, event.payload.get("node", "-"))
        after = [e.payload["node"] for e in events if e.seq > max(seen) and e.type == "node_update"]
        assert after[-3:] == ["s3", "s4", "s5"]
