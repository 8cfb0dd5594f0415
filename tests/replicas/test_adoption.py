"""A replica that dies in an outage and is never started again: a live one adopts its file.

Two real `code-hero serve` processes share a working directory (compose --scale,
systemd template units): the first holds `fallback.sqlite`, the second
`fallback-2.sqlite`. The database (a cluster of the test's own) goes down, the
second takes work on its file and is SIGKILLed, and nothing starts it again.
What it acknowledged must reach PostgreSQL through the first, read there
directly, and its file must be left free and empty for a later server.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from code_hero.persistence.outagefile import OutageFile
from tests.replicas.conftest import Cluster
from tests.replicas.test_durable_fallback import (
    OwnPostgres,
    _in_postgres,
    _run,
    _start,
    _until,
    own_cluster,
    own_pg,
    servers,
)
from tests.replicas.test_outage import wait_health, wait_steps

__all__ = ["own_cluster", "own_pg", "servers"]  # the fixtures, used by name below

pytestmark = pytest.mark.postgres


def _status(pg: OwnPostgres, run_id: str) -> list[tuple[str]]:
    return [(r[0],) for r in pg.rows("SELECT status FROM code_hero_runs WHERE run_id = %s", run_id)]


def _log(tmp_path: Path, name: str) -> str:
    return "".join(p.read_text() for p in tmp_path.glob(f"{name}-*.log"))


def test_a_dead_replicas_acknowledged_run_reaches_postgres_through_the_survivor(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    _start(servers, tmp_path, "survivor")
    dead = _start(servers, tmp_path, "dead")  # fallback-2.sqlite
    own_pg.stop()
    run = asyncio.run(_run(dead, input={"delay": 0}, wait=True))
    assert run["status"] == "SUCCESS"  # acknowledged, in fallback-2's journal only
    dead.kill()  # and never started again
    own_pg.start()
    _until(lambda: _status(own_pg, run["id"]) == [("SUCCESS",)])
    _, seqs, checkpoints = _in_postgres(own_pg, run)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 2
    assert checkpoints >= 7  # the input's and one per step of the 6
    _until(lambda: "adopted fallback file" in _log(tmp_path, "survivor"))
    log = _log(tmp_path, "survivor")
    assert "adopting the fallback file" in log and "fallback-2.sqlite" in log
    # Given back: emptied, its lock released, so a later server takes the name.
    later = OutageFile.claim(str(tmp_path / "fallback.sqlite"), own_pg.url)
    try:
        assert later.data_path == str(tmp_path / "fallback-2.sqlite")
        assert later.load().empty
    finally:
        later.close()


def test_a_dead_replicas_run_in_flight_is_resumed_once_by_the_survivor(
    own_pg: OwnPostgres, servers: Cluster, tmp_path: Path
) -> None:
    survivor = _start(servers, tmp_path, "survivor")
    dead = _start(servers, tmp_path, "dead")
    own_pg.stop()
    run = asyncio.run(_run(dead, input={"delay": 0.3}))
    asyncio.run(wait_steps(dead, run["id"], 2))  # two steps stored on its file
    dead.kill()  # mid-run, never started again
    own_pg.start()
    asyncio.run(wait_health(survivor, "HEALTHY"))
    # Copied RUNNING under the dead lease, claimed once it lapses, resumed, ended.
    _until(lambda: _status(own_pg, run["id"]) == [("SUCCESS",)], limit=60)
    _, seqs, checkpoints = _in_postgres(own_pg, run)
    assert seqs == list(range(1, len(seqs) + 1)) and checkpoints >= 7
    [(steps,)] = own_pg.rows(
        "SELECT output->'steps' FROM code_hero_runs WHERE run_id = %s", run["id"]
    )
    assert steps == [f"s{i}" for i in range(6)]  # each step once: resumed, not repeated
