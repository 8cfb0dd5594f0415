"""Review of adoption: what a restart logs of a file another database's outage left."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from code_hero.persistence.entries import DeleteThread
from code_hero.persistence.journal import Journal
from code_hero.persistence.outagefile import OutageFile

DB = "postgresql://db.here/mine"


def test_a_restart_names_another_databases_file_once(tmp_path: Path, caplog: Any) -> None:
    """A live server holds fb; fb-2 holds another database's outage, its process gone.
    A restart used to say so in one WARNING (README: "a `WARNING` names it"). Now the
    orphan look (`OutageFile.orphan`) says it is left alone, the name loop says it again
    with advice to start a server on it by hand, and the waiting files' WARNING adds that
    "a server on the same database adopts" it: three lines for one file at each start,
    two of them with different advice."""
    live = OutageFile.claim(str(tmp_path / "fb.sqlite"), DB)
    foreign = OutageFile.claim(str(tmp_path / "fb-2.sqlite"), "postgresql://db.elsewhere/other")
    journal = Journal(100)
    journal.attach(foreign, {})
    journal.append(DeleteThread("another-databases"))
    foreign.close()
    caplog.set_level(logging.WARNING)
    try:
        restarted = OutageFile.claim(str(tmp_path / "fb.sqlite"), DB)
        restarted.close()
    finally:
        live.close()
    named = [r.getMessage() for r in caplog.records if "fb-2.sqlite" in r.getMessage()]
    assert len(named) == 1, named
