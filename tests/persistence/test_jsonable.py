"""Checkpoint values rendered as plain JSON, whatever they hold."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple
from uuid import UUID

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.types import Send

from code_hero.persistence.jsonable import to_jsonable


@dataclass
class Point:
    x: int
    y: int


class Pair(NamedTuple):
    left: int
    right: str


class Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


class Broken:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_messages_bytes_times_and_others() -> None:
    value = {
        "messages": [HumanMessage("hi", id="1"), AIMessage("yo", id="2")],
        "blob": b"\xff\x00",
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "point": Point(1, 2),
        "tags": {"b", "a"},
        "pair": Pair(1, "r"),
        "n": Decimal("1.5"),
        "id": UUID(int=1),
        "nan": float("nan"),
        "send": Send("node", {"x": 1}),
        "opaque": Opaque(),
        3: "int key",
    }
    out = to_jsonable(value)
    json.dumps(out)  # plain JSON, nothing left over
    assert out["messages"][0]["type"] == "human" and out["messages"][1]["content"] == "yo"
    assert out["blob"] == {"__type__": "bytes", "base64": "/wA="}
    assert out["when"] == "2026-01-02T03:04:05+00:00"
    assert out["point"] == {"__type__": f"{__name__}.Point", "x": 1, "y": 2}
    assert out["tags"] == ["a", "b"]
    assert out["pair"] == [1, "r"]  # a tuple first: named fields are not kept
    assert out["n"] == "1.5" and out["id"] == str(UUID(int=1)) and out["nan"] == "nan"
    assert out["send"]["node"] == "node" and out["send"]["arg"] == {"x": 1}
    assert out["opaque"] == {"__type__": f"{__name__}.Opaque", "repr": "<opaque>"}
    assert out["3"] == "int key"


def test_never_raises() -> None:
    out = to_jsonable({"bad": Broken()})
    assert out["bad"]["__type__"].endswith("Broken") and "unrenderable" in out["bad"]["error"]
    deep: list[object] = []
    node = deep
    for _ in range(200):
        node.append([])
        node = node[0]  # type: ignore[assignment]
    json.dumps(to_jsonable(deep))


def test_storable_replaces_what_no_database_can_hold() -> None:
    from code_hero.persistence.jsonable import storable

    value = {"a\x00": ["ok", "nul\x00", {"k": "lone \ud800 surrogate"}], "n": 1, "f": None}
    assert storable(value) == {
        "a\ufffd": ["ok", "nul\ufffd", {"k": "lone \ufffd surrogate"}],
        "n": 1,
        "f": None,
    }
    clean = {"a": ["é", {"k": "😀"}], "n": 2}
    assert storable(clean) is clean, "nothing to replace: no copy"


def test_storable_walks_a_timeline_of_dataclasses_in_a_tuple() -> None:
    # A run's steps: a tuple of frozen StepRecords, a node's error text in each.
    from code_hero.persistence.jsonable import storable
    from code_hero.persistence.records import StepRecord

    at = datetime(2026, 1, 1, tzinfo=UTC)
    ok = StepRecord("a", "", at, at)
    fields = {"steps": (ok, StepRecord("b", "", at, at, "ValueError: zero\x00byte"))}
    stored = storable(fields)
    assert stored["steps"] == (ok, StepRecord("b", "", at, at, "ValueError: zero\ufffdbyte"))
    assert stored["steps"][0] is ok, "only what holds a NUL is copied"
    clean = {"steps": (ok,)}
    assert storable(clean) is clean
