"""migrate(): SQLite to PostgreSQL, compared item by item, idempotent when re-run."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import psycopg
import pytest
from langchain_core.messages import HumanMessage

from code_hero.checkpointing import (
    EnhancedCheckpointerManager,
    create_postgres_checkpointer,
    create_sqlite_checkpointer,
    migrate,
)
from code_hero.persistence.records import EventRecord, RunRecord, RunStatus, ThreadStatus
from tests.graphs import build_graph

pytestmark = pytest.mark.postgres


async def snapshot(manager: EnhancedCheckpointerManager) -> dict:
    """Everything a client could read, per thread."""
    out = {}
    for thread in await manager.list_threads(limit=100):
        tid = thread["thread_id"]
        tuples = await manager.router.read_list({"configurable": {"thread_id": tid}})
        checkpoints = sorted(
            (
                t.config["configurable"]["checkpoint_ns"],
                t.checkpoint["id"],
                repr(sorted(t.checkpoint["channel_values"].items())),
                repr(sorted(t.pending_writes or [])),
            )
            for t in tuples
        )
        runs = (await manager.registry.list_runs(_run_filter(tid), first=100)).items
        events = {r.run_id: await manager.registry.list_events(r.run_id) for r in runs}
        out[tid] = (thread, checkpoints, runs, events)
    return out


def _run_filter(thread_id: str):  # type: ignore[no-untyped-def]
    from code_hero.persistence.records import RunFilter

    return RunFilter(thread_id=thread_id)


async def test_sqlite_to_postgres_copies_everything(sqlite_path: str, pg_database: str) -> None:
    source = create_sqlite_checkpointer(sqlite_path)
    target = create_postgres_checkpointer(pg_database)
    async with EnhancedCheckpointerManager(source) as src:
        for i in range(3):
            graph = build_graph(with_subgraph=True).compile(checkpointer=src.get_checkpointer())
            await graph.ainvoke(
                {"messages": [HumanMessage(f"hi {i}")]},
                src.create_thread_config(f"t{i}", user_id="u"),
            )
        t1 = await src.registry.get_thread("t1")
        assert t1 is not None
        await src.registry.put_thread(replace(t1, metadata={"project": "x"}))
        now = datetime.now(UTC)
        await src.registry.admit_run(
            RunRecord(
                run_id="r1", thread_id="t1", graph="g", status=RunStatus.PENDING, input={"a": 1}
            ),
            reject_if_busy=True,
            events=[EventRecord("r1", "t1", s, "status", {"s": s}, now) for s in (1, 2, 3)],
        )
        await src.registry.finish_run("r1", ThreadStatus.IDLE, status=RunStatus.SUCCESS)
        before = await snapshot(src)

    report = await migrate(source, target)
    assert (report.threads, report.runs, report.events) == (3, 1, 3)
    assert report.checkpoints == sum(len(v[1]) for v in before.values())

    async with EnhancedCheckpointerManager(target) as dst:
        after = await snapshot(dst)
    assert after.keys() == before.keys()
    for tid in before:
        assert after[tid][0] == before[tid][0], "thread row with its timestamps"
        assert after[tid][1] == before[tid][1], "checkpoints, every namespace, with writes"
        assert after[tid][2] == before[tid][2]
        assert after[tid][3] == before[tid][3]

    again = await migrate(source, target)
    assert again.checkpoints == report.checkpoints and again.events == 0
    with psycopg.connect(pg_database) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM checkpoints), (SELECT count(*) FROM code_hero_runs),"
            " (SELECT count(*) FROM code_hero_run_events), (SELECT count(*) FROM code_hero_threads)"
        ).fetchone()
    assert counts == (report.checkpoints, 1, 3, 3)
