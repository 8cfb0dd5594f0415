"""bench/_common.py's `Replica`: the server it starts loads its own modules as an
installed package does."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from _common import Replica


def test_a_replica_starts_from_bytecode_where_none_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This machine sets PYTHONDONTWRITEBYTECODE: a server run from a checkout would
    # compile its own modules from source at every start (and hold 1.2 MiB more on
    # PostgreSQL after start-up), which the peer, installed with its bytecode, never does.
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    source = tmp_path / "src" / "served" / "module.py"
    source.parent.mkdir(parents=True)
    (source.parent / "__init__.py").write_text("")
    source.write_text("VALUE = 1\n")
    replica = Replica("memory://", tmp_path, tree=tmp_path)
    try:
        assert Path(importlib.util.cache_from_source(str(source))).is_file()
    finally:
        replica.stop()
