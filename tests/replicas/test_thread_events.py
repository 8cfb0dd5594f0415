"""A thread's subscriber on one replica gets every run executed on another, a run
begun and ended while its replica's LISTEN connection was down included."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import psycopg
import pytest

from tests.graphql.clients import TransportWS
from tests.replicas.conftest import Cluster
from tests.replicas.test_lost_notifications import listener_pids
from tests.replicas.test_replicas import finished, run_with_events, start_run

pytestmark = pytest.mark.postgres

SUBSCRIBE = """subscription($t: ID!) { threadEvents(threadId: $t) { seq runId __typename
  ... on RunStatusChanged { status } } }"""
FINAL = {"SUCCESS", "ERROR", "CANCELLED", "INTERRUPTED"}


async def until_end_of(
    ws: TransportWS, run_id: str, got: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Events of operation "1" (after those in `got`) until `run_id`'s final one."""
    async with asyncio.timeout(60):
        while not any(e["runId"] == run_id and e.get("status") in FINAL for e in got):
            message = await ws.next_message(60)
            if message.get("id") != "1":
                continue
            assert message["type"] == "next", message
            got.append(message["payload"]["data"]["threadEvents"])
    return got


def seqs_of(events: list[dict[str, Any]], run_id: str) -> list[int]:
    return [e["seq"] for e in events if e["runId"] == run_id]


async def test_a_run_missed_while_the_listener_was_down_is_replayed(cluster: Cluster) -> None:
    a = cluster.start("a", CODE_HERO_MAX_CONCURRENT_RUNS="0")  # A serves, B executes
    (a_listener,) = listener_pids(cluster.url)
    b = cluster.start("b")
    before = await start_run(b, input={})
    thread_id = before["threadId"]
    await finished(b, before["id"])
    async with TransportWS.connect(a.ws) as ws:
        await ws.subscribe("1", SUBSCRIBE, {"t": thread_id})
        seen = await start_run(b, threadId=thread_id, input={})
        got = await until_end_of(ws, seen["id"], [])  # A follows the thread
        # A is stopped, so its listener cannot reconnect before the next run has ended.
        os.kill(a.process.pid, signal.SIGSTOP)
        try:
            with psycopg.connect(cluster.url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s, 30000)", (a_listener,))
            unseen = await start_run(b, threadId=thread_id, input={})
            assert (await finished(b, unseen["id"]))["status"] == "SUCCESS"
        finally:
            os.kill(a.process.pid, signal.SIGCONT)
        # A's listener reconnects and pokes: the subscriber re-reads the thread's runs.
        await until_end_of(ws, unseen["id"], got)
    assert a_listener not in listener_pids(cluster.url)
    assert before["id"] not in {e["runId"] for e in got}, "nothing from before"
    seen_stored = [e["seq"] for e in (await run_with_events(b, seen["id"]))["events"]]
    seen_got = seqs_of(got, seen["id"])
    assert seen_got == seen_stored[seen_got[0] - 1 :], "in order, none twice"
    unseen_stored = [e["seq"] for e in (await run_with_events(b, unseen["id"]))["events"]]
    assert seqs_of(got, unseen["id"]) == unseen_stored
