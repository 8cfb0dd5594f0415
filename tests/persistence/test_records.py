"""Records: a run's copy with some fields changed."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from code_hero.persistence.records import RunRecord, RunStatus, StepRecord, changed_run

AT = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_changed_run_is_what_replace_makes_and_the_original_stays() -> None:
    run = RunRecord("r", "t", "g", RunStatus.RUNNING, input={"a": 1}, created_at=AT)
    changes = {"steps": (StepRecord("n", "", AT),), "input_tokens": 3, "status": "SUCCESS"}
    changed = changed_run(run, changes)
    assert changed == dataclasses.replace(run, **changes)  # type: ignore[arg-type]
    assert repr(changed) == repr(dataclasses.replace(run, **changes))  # type: ignore[arg-type]
    assert run.steps == () and run.input_tokens == 0 and run.status is RunStatus.RUNNING
    assert changed_run(run, {}) == run
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.error = "x"  # type: ignore[misc]


def test_a_field_runs_lack_is_refused_as_replace_refuses_it() -> None:
    run = RunRecord("r", "t", "g", RunStatus.RUNNING)
    with pytest.raises(TypeError):
        changed_run(run, {"nope": 1})
