"""The registry's JSON text: orjson's, with json.dumps for what orjson refuses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pytest

from code_hero.persistence.registry.dialect import dumps


class Color(StrEnum):
    RED = "red"


@dataclass
class Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [
        {"status": "RUNNING", "error": None, "n": 1, "f": 0.1, "big": 1e16, "ok": True},
        [{"nested": {"list": [1, 2, [3]]}}, (4, 5)],
        {"color": Color.RED},
        {"x": 2**70},  # past 64 bits: orjson refuses, json.dumps writes it
        {1: "int key"},  # json.dumps makes it "1"; orjson refuses
    ],
)
def test_same_json_as_json_dumps(value: Any) -> None:
    text = dumps(value)
    assert text == json.dumps(value, separators=(",", ":"))
    assert json.loads(text) == json.loads(json.dumps(value))


def test_non_ascii_as_utf8_the_same_json() -> None:
    value = {"text": "café ☕ 日本", "emoji": "🙂"}
    text = dumps(value)
    assert text == '{"text":"café ☕ 日本","emoji":"🙂"}'  # not \\u escapes
    assert json.loads(text) == value


@pytest.mark.parametrize("value", [{"at": datetime.now(UTC)}, {"p": Point(1)}])
def test_refuses_what_json_dumps_refuses(value: Any) -> None:
    with pytest.raises(TypeError):
        dumps(value)
