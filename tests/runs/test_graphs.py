"""Users' graphs from CODE_HERO_GRAPHS and langgraph.json; bad specs fail at start-up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from code_hero.errors import ConfigurationError
from code_hero.gateway import Gateway, GatewaySettings
from code_hero.persistence.records import RunStatus
from code_hero.runs.executor import StartRun
from code_hero.runs.graphs import GraphRegistry, parse_graph_specs
from code_hero.settings import settings_from_env

HERE = Path(__file__).parent
COMPILED = """
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import StateGraph, START, END
from typing_extensions import TypedDict

class S(TypedDict, total=False):
    n: int

def inc(state: S) -> dict:
    return {"n": state.get("n", 0) + 1}

builder = StateGraph(S)
builder.add_node("inc", inc)
builder.add_edge(START, "inc")
builder.add_edge("inc", END)
compiled = builder.compile(checkpointer=InMemorySaver())  # ours replaces it
not_a_graph = 42

async def make_graph(config):
    return builder
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "agent.py").write_text(COMPILED)
    (tmp_path / "langgraph.json").write_text(
        json.dumps(
            {
                "dependencies": ["."],
                "graphs": {"counter": "./agent.py:compiled", "factory": "./agent.py:make_graph"},
            }
        )
    )
    return tmp_path


async def test_graphs_from_env_and_langgraph_json(project: Path, sqlite_path: str) -> None:
    env = {
        "CODE_HERO_GRAPHS": f"slow={HERE / 'slow_graph.py'}:graph,chain=tests.graphs:build_graph",
        "CODE_HERO_LANGGRAPH_JSON": str(project / "langgraph.json"),
        "CODE_HERO_DATABASE_URL": f"sqlite:///{sqlite_path}",
    }
    settings = settings_from_env(env)
    assert set(settings.gateway.graphs) == {"slow", "chain", "counter", "factory"}
    async with Gateway(settings.gateway) as gw:
        assert [g.name for g in gw.graphs()] == ["code_hero", "chain", "counter", "factory", "slow"]
        assert [a.name for a in next(g for g in gw.graphs() if g.name == "counter").agents] == [
            "inc"
        ]
        for graph, payload in (
            ("counter", {"n": 1}),
            ("factory", {"n": 5}),
            ("chain", {"steps": []}),
        ):
            run = await gw.start_run(StartRun(graph=graph, input=payload, wait=True))
            assert run.status is RunStatus.SUCCESS, run.error
            # The manager's checkpointer, not the one the user compiled with.
            assert await gw.get_checkpoint(run.thread_id) is not None
        counted = await gw.start_run(StartRun(graph="counter", input={"n": 1}, wait=True))
        assert counted.output == {"n": 2}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("x=no.such.module:graph", "graph 'x' .*could not be loaded: ModuleNotFoundError"),
        ("x=./missing.py:graph", "could not be loaded: FileNotFoundError"),
        ("x={agent}:nothing", "could not be loaded: AttributeError"),
        ("x={agent}:not_a_graph", "is a int, not a LangGraph graph"),
    ],
)
async def test_bad_specs_fail_at_start_up(project: Path, spec: str, match: str) -> None:
    specs = parse_graph_specs(spec.format(agent=project / "agent.py"))
    with pytest.raises(ConfigurationError, match=match):
        await GraphRegistry.load(None, specs=specs)


def test_malformed_spec_strings() -> None:
    for text in ("justaname", "=mod:attr", "name=module_without_attr"):
        with pytest.raises(ConfigurationError, match="is not name=module:attribute"):
            parse_graph_specs(text)
    assert parse_graph_specs(" a = m:x , ") == {"a": "m:x"}


def test_langgraph_json_errors(tmp_path: Path) -> None:
    bad = tmp_path / "langgraph.json"
    bad.write_text("{}")
    with pytest.raises(ConfigurationError, match="no `graphs` section"):
        settings_from_env({"CODE_HERO_LANGGRAPH_JSON": str(bad)})
    with pytest.raises(ConfigurationError, match="cannot read"):
        settings_from_env({"CODE_HERO_LANGGRAPH_JSON": str(tmp_path / "absent.json")})


async def test_unknown_default_graph() -> None:
    with pytest.raises(ConfigurationError, match="default graph 'nope' is not loaded"):
        await GraphRegistry.load(None, default="nope")
    async with Gateway(GatewaySettings()) as gw:
        assert [g.name for g in gw.graphs()] == ["code_hero"]
        assert len(gw.graphs()[0].agents) == 19


async def test_input_keys_rendered_once_per_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rendering the built-in graph's input schema takes pydantic ~15 ms: not per run.
    registry = await GraphRegistry.load(None)
    graph = registry.get(None)
    rendered = 0
    render = graph.get_input_jsonschema

    def counting(*args: object, **kwargs: object) -> dict[str, object]:
        nonlocal rendered
        rendered += 1
        return render(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(graph, "get_input_jsonschema", counting)
    for name in (None, "code_hero", None):
        keys = registry.input_keys(name)
        assert keys is not None and "messages" in keys
    assert rendered == 1
