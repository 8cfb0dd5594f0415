"""`runStats`: counts, durations, usage and a time series of runs, over GraphQL.

Runs are stored as given (created, started and finished times, statuses, token
counts) through the gateway's registry, on SQLite and PostgreSQL, for Alice
and Bob; each user's statistics hold only the runs on their own threads.
Percentiles are continuous (PostgreSQL's percentile_cont; SQLite agrees): of
sorted durations d[0..n-1], d[lo] + (p - lo) * (d[lo+1] - d[lo]), p = q(n-1).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from code_hero.persistence.records import Registry, RunRecord, RunStatus, ThreadRecord
from code_hero.persistence.records import ThreadStatus as TS
from tests.auth.issuer import Issuer
from tests.graphql.clients import codes, data, gql
from tests.graphql.conftest import Server, checkpointer_for
from tests.graphql.test_auth import ALICE_KEY, BOB_KEY, ROOT_KEY, client, secured

STATS = """query($filter: RunFilter, $bucket: TimeBucket) {
  runStats(filter: $filter, bucket: $bucket) {
    runs
    byStatus { status count }
    byGraph { graph runs errors durationMs { count mean p50 p95 max } }
    durationMs { count mean p50 p95 max }
    usage { inputTokens outputTokens totalTokens }
    series { start runs byStatus { status count } usage { inputTokens outputTokens totalTokens } }
  }
}"""

BASE = datetime(2025, 1, 1, tzinfo=UTC)
STATUSES = [s.value for s in RunStatus]


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return at(seconds).isoformat()


# (owner, created s, graph, status, duration ms or None (unfinished), tokens in, out)
RUNS: list[tuple[str, int, str, RunStatus, int | None, int, int]] = [
    ("alice", 10, "g", RunStatus.SUCCESS, 100, 10, 5),
    ("alice", 20, "g", RunStatus.SUCCESS, 200, 20, 10),
    ("alice", 90, "g", RunStatus.ERROR, 400, 1, 0),
    ("alice", 180, "h", RunStatus.SUCCESS, 1000, 0, 0),
    ("alice", 190, "h", RunStatus.RUNNING, None, 0, 0),
    ("alice", 200, "g", RunStatus.PENDING, None, 0, 0),
    ("bob", 30, "g", RunStatus.SUCCESS, 50_000, 1000, 1000),
    ("bob", 120, "g", RunStatus.CANCELLED, -1, 0, 0),  # cancelled before it started
]


async def store(registry: Registry) -> None:
    threads = {}
    for user in ("alice", "bob"):
        threads[user] = str(uuid.uuid4())
        await registry.put_thread(ThreadRecord(threads[user], user, TS.IDLE, {}, at(0), at(0)))
    for owner, created, graph, status, duration, tokens_in, tokens_out in RUNS:
        started = None if duration is None or duration < 0 else at(created + 1)
        finished = None
        if duration is not None:
            finished = (
                at(created + 1) if started is None else started + timedelta(milliseconds=duration)
            )
        await registry.put_run(
            RunRecord(
                run_id=str(uuid.uuid4()),
                thread_id=threads[owner],
                graph=graph,
                status=status,
                created_at=at(created),
                started_at=started if status is not RunStatus.PENDING else None,
                finished_at=finished,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                user_id=owner,
            )
        )


async def stats(http: httpx.AsyncClient, **variables: Any) -> dict[str, Any]:
    result: dict[str, Any] = data(await gql(http, STATS, variables))["runStats"]
    return result


def by_status(**counts: int) -> list[dict[str, Any]]:
    return [{"status": s, "count": counts.get(s, 0)} for s in STATUSES]


def usage(tokens_in: int, tokens_out: int) -> dict[str, int]:
    return {
        "inputTokens": tokens_in,
        "outputTokens": tokens_out,
        "totalTokens": tokens_in + tokens_out,
    }


def durations(values: Sequence[float]) -> dict[str, Any]:
    """count, mean, continuous p50/p95, max: the definition, computed here by hand."""
    d = sorted(values)

    def cont(q: float) -> float:
        p = q * (len(d) - 1)
        lo = int(p)
        hi = min(lo + 1, len(d) - 1)
        return d[lo] + (p - lo) * (d[hi] - d[lo])

    return {
        "count": len(d),
        "mean": pytest.approx(sum(d) / len(d)),
        "p50": pytest.approx(cont(0.5)),
        "p95": pytest.approx(cont(0.95)),
        "max": pytest.approx(d[-1]),
    }


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return Issuer(tmp_path_factory.mktemp("idp"))


async def test_run_stats_per_user_with_series(
    backend: str, idp: Issuer, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    async with secured(checkpointer_for(backend, request, tmp_path), idp) as server:
        await store(server.gateway.manager.registry)
        async with client(server, ALICE_KEY) as alice:
            mine = await stats(alice, bucket="MINUTE")
            assert mine["runs"] == 6  # never Bob's two
            assert mine["byStatus"] == by_status(SUCCESS=3, ERROR=1, RUNNING=1, PENDING=1)
            assert mine["byGraph"] == [
                {"graph": "g", "runs": 4, "errors": 1, "durationMs": durations([100, 200, 400])},
                {"graph": "h", "runs": 2, "errors": 0, "durationMs": durations([1000])},
            ]
            # p50 300 (between 200 and 400), p95 910 (0.85 of the way from 400 to 1000).
            assert mine["durationMs"] == durations([100, 200, 400, 1000])
            assert mine["durationMs"]["p50"] == pytest.approx(300)
            assert mine["durationMs"]["p95"] == pytest.approx(910)
            assert mine["durationMs"]["mean"] == pytest.approx(425)
            assert mine["usage"] == usage(31, 15)
            # Minutes from the first run's to the last one's; 00:02 is empty for Alice.
            assert [(b["start"], b["runs"]) for b in mine["series"]] == [
                (iso(0), 2),
                (iso(60), 1),
                (iso(120), 0),
                (iso(180), 3),
            ]
            assert mine["series"][0]["usage"] == usage(30, 15)
            assert mine["series"][2]["byStatus"] == by_status()
            assert mine["series"][3]["byStatus"] == by_status(SUCCESS=1, RUNNING=1, PENDING=1)

            # The filter's bounds make the range, empty buckets at both ends included.
            bounded = {"createdAfter": iso(-120), "createdBefore": iso(300)}
            window = await stats(alice, bucket="MINUTE", filter=bounded)
            assert [(b["start"], b["runs"]) for b in window["series"]] == [
                (iso(-120), 0),
                (iso(-60), 0),
                (iso(0), 2),
                (iso(60), 1),
                (iso(120), 0),
                (iso(180), 3),
                (iso(240), 0),
            ]
            hour = await stats(alice, bucket="HOUR")
            assert [(b["start"], b["runs"]) for b in hour["series"]] == [(iso(0), 6)]
            assert (await stats(alice))["series"] == []

            # createdAfter/createdBefore are exclusive, in runs and runStats alike.
            middle = {"createdAfter": iso(20), "createdBefore": iso(190)}
            some = await stats(alice, filter=middle)
            assert some["runs"] == 2 and some["byStatus"] == by_status(SUCCESS=1, ERROR=1)
            listed = data(
                await gql(
                    alice,
                    "query($f: RunFilter) { runs(filter: $f) { totalCount } }",
                    {"f": middle},
                )
            )
            assert listed["runs"]["totalCount"] == 2
            graph_h = await stats(alice, filter={"graph": "h", "status": "SUCCESS"})
            assert graph_h["runs"] == 1 and graph_h["durationMs"] == durations([1000])

            # Naming another user is refused, as for `runs`.
            body = await gql(alice, STATS, {"filter": {"userId": "bob"}})
            assert codes(body) == ["FORBIDDEN"]

        async with client(server, BOB_KEY) as bob:
            theirs = await stats(bob, bucket="DAY")
            assert theirs["runs"] == 2
            assert theirs["byStatus"] == by_status(SUCCESS=1, CANCELLED=1)
            # The cancelled run never started: it has no duration.
            assert theirs["durationMs"] == durations([50_000])
            assert theirs["usage"] == usage(1000, 1000)
            assert [(b["start"], b["runs"]) for b in theirs["series"]] == [(iso(0), 2)]

        async with client(server, ROOT_KEY) as root:
            everything = await stats(root)
            assert everything["runs"] == 8
            assert everything["byStatus"] == by_status(
                SUCCESS=4, ERROR=1, RUNNING=1, PENDING=1, CANCELLED=1
            )
            assert everything["durationMs"] == durations([100, 200, 400, 1000, 50_000])
            assert everything["usage"] == usage(1031, 1015)
            assert [g["runs"] for g in everything["byGraph"]] == [6, 2]


async def test_no_matching_runs_and_too_many_buckets(server: Server) -> None:
    http = server.http
    nothing = await stats(http, filter={"graph": "none"}, bucket="HOUR")
    assert nothing == {
        "runs": 0,
        "byStatus": by_status(),
        "byGraph": [],
        "durationMs": None,
        "usage": usage(0, 0),
        "series": [],
    }
    # Both bounds given: the buckets are there, empty.
    day = {"createdAfter": iso(0), "createdBefore": iso(3 * 3600)}
    empty = await stats(http, filter={**day, "graph": "none"}, bucket="HOUR")
    assert [(b["start"], b["runs"]) for b in empty["series"]] == [
        (iso(0), 0),
        (iso(3600), 0),
        (iso(7200), 0),
    ]
    # 1,440 minutes in a day: more than 1,000 buckets.
    whole_day = {"createdAfter": iso(0), "createdBefore": iso(86_400)}
    assert codes(await gql(http, STATS, {"filter": whole_day, "bucket": "MINUTE"})) == [
        "BAD_USER_INPUT"
    ]
    assert (await stats(http, filter=whole_day, bucket="HOUR"))["series"][-1]["start"] == iso(
        23 * 3600
    )
    # One bound from the filter, the other from the runs: 1,489 hours is refused too.
    await store(server.gateway.manager.registry)
    since = {"createdAfter": (BASE - timedelta(days=62)).isoformat()}
    assert codes(await gql(http, STATS, {"filter": since, "bucket": "HOUR"})) == ["BAD_USER_INPUT"]
    assert len((await stats(http, filter=since, bucket="DAY"))["series"]) == 63


async def test_the_cost_prices_a_full_series_and_a_runs_steps(server: Server) -> None:
    series = (
        "{ runStats(bucket: HOUR) { series { start byStatus { count } usage { totalTokens } } } }"
    )
    # runStats 1, and 1,000 buckets of 1 + 6 statuses + 1 usage.
    assert (await gql(server.http, series))["extensions"]["cost"] == 1 + 1000 * 8
    steps = "{ runs(first: 10) { edges { node { steps { node } usage { totalTokens } } } } }"
    # The connection 1, 10 edges and nodes, 100 steps and a usage per run.
    assert (await gql(server.http, steps))["extensions"]["cost"] == 1 + 10 * (1 + 1 + 100 + 1)
