"""A statement that is slow by itself (not behind a lock) runs into statement_timeout
every time: 57014 is now read as contention, so the run is released and its node
executed again MAX_LOCK_RELEASES times before it ends ERROR. Before the pgfault branch
it ended ERROR at once, its side effect made once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
import pytest

from code_hero.config import create_postgres_checkpointer
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.runs.executor import StartRun

SPEC = f"{Path(__file__).with_name('slow_write_graph.py')}:graph"

_SLOW = """
CREATE FUNCTION rv_slow_bytea() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF position(convert_to('slowmarker', 'UTF8') IN NEW.blob) > 0 THEN
    PERFORM pg_sleep(1);
  END IF;
  RETURN NEW;
END $$;
CREATE FUNCTION rv_slow_json() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.checkpoint::text LIKE '%slowmarker%' THEN PERFORM pg_sleep(1); END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER rv_slow BEFORE INSERT OR UPDATE ON checkpoint_writes
  FOR EACH ROW EXECUTE FUNCTION rv_slow_bytea();
CREATE TRIGGER rv_slow BEFORE INSERT OR UPDATE ON checkpoint_blobs
  FOR EACH ROW EXECUTE FUNCTION rv_slow_bytea();
CREATE TRIGGER rv_slow BEFORE INSERT OR UPDATE ON checkpoints
  FOR EACH ROW EXECUTE FUNCTION rv_slow_json();
"""


@pytest.mark.postgres
async def test_a_statement_slow_by_itself_does_not_rerun_the_node(
    pg_database: str, tmp_path: Path
) -> None:
    config = create_postgres_checkpointer(pg_database)
    settings = GatewaySettings(checkpointer=config, graphs={"g": SPEC})
    async with Gateway(settings) as gw:  # the tables made
        pass
    async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as conn:
        await conn.execute(_SLOW)
        await conn.execute(f'ALTER DATABASE "{conn.info.dbname}" SET statement_timeout = 300')
    async with Gateway(settings) as gw:
        run = await gw.start_run(StartRun(graph="g", input={"folder": str(tmp_path)}))
        for _ in range(1200):  # 60 s at most: a guard
            record = await gw.manager.registry.get_run(run.run_id)
            assert record is not None
            if record.status.finished:
                break
            await asyncio.sleep(0.05)
    assert record.status.value == "ERROR", record
    assert (tmp_path / "side-effects").read_text() == "x", record.error
