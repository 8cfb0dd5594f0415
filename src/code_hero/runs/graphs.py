"""The graph registry: the built-in `code_hero` graph and users' own LangGraph graphs.

Graphs come from specs `name=package.module:attribute` or
`name=./path/file.py:attribute` (CODE_HERO_GRAPHS, comma separated) and from
the `graphs` section of a `langgraph.json`, as LangGraph's own tooling reads
it. The attribute may be a compiled graph, an uncompiled `StateGraph`, or a
function returning either (sync or async, taking no argument or a config);
the registry compiles or copies it with the manager's checkpointer.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

from code_hero.agents import AGENTS
from code_hero.errors import ConfigurationError, NotFoundError

__all__ = ["BUILTIN_GRAPH", "AgentInfo", "GraphInfo", "GraphRegistry", "parse_graph_specs"]

BUILTIN_GRAPH = "code_hero"


@dataclass(frozen=True)
class AgentInfo:
    name: str
    team: str | None
    description: str


@dataclass(frozen=True)
class GraphInfo:
    name: str
    default: bool
    agents: tuple[AgentInfo, ...]


def parse_graph_specs(text: str | None) -> dict[str, str]:
    """`a=pkg.mod:attr,b=./file.py:attr` as {name: target}."""
    specs: dict[str, str] = {}
    for raw in (text or "").split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or ":" not in target:
            raise ConfigurationError(
                f"graph spec {item!r} is not name=module:attribute or name=./file.py:attribute"
            )
        specs[name.strip()] = target.strip()
    return specs


def read_langgraph_json(path: str | Path) -> dict[str, str]:
    """The `graphs` section of a langgraph.json, paths made relative to its folder."""
    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {file}: {exc}") from None
    graphs = data.get("graphs") if isinstance(data, dict) else None
    if not isinstance(graphs, dict) or not graphs:
        raise ConfigurationError(f"{file} has no `graphs` section")
    specs = {}
    for name, target in graphs.items():
        if isinstance(target, dict):  # {"path": "./x.py:graph", "description": ...}
            target = target.get("path")
        if not isinstance(target, str) or ":" not in target:
            raise ConfigurationError(f"{file}: graph {name!r} must be 'path:attribute'")
        module, _, attr = target.rpartition(":")
        if module.endswith(".py") or module.startswith((".", "/")):
            module = str((file.parent / module).resolve())
        specs[str(name)] = f"{module}:{attr}"
    return specs


def _load_target(name: str, target: str) -> Any:
    module_ref, _, attr = target.rpartition(":")
    try:
        if module_ref.endswith(".py") or "/" in module_ref:
            path = Path(module_ref).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            mod_name = f"code_hero_user_graph_{name}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            sys.path.insert(0, str(path.parent))
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            module = importlib.import_module(module_ref)
        return getattr(module, attr)
    except Exception as exc:
        raise ConfigurationError(
            f"graph {name!r} ({target}) could not be loaded: {type(exc).__name__}: {exc}"
        ) from None


async def _materialise(name: str, target: str, obj: Any) -> Any:
    if isinstance(obj, (Pregel, StateGraph)):
        return obj
    if callable(obj):
        try:
            required = [
                p
                for p in inspect.signature(obj).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            ]
            result = obj({"configurable": {}}) if required else obj()  # LangGraph passes a config
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            raise ConfigurationError(
                f"graph {name!r} ({target}): its factory failed: {type(exc).__name__}: {exc}"
            ) from None
        if isinstance(result, (Pregel, StateGraph)):
            return result
        obj = result
    raise ConfigurationError(
        f"graph {name!r} ({target}) is a {type(obj).__name__}, not a LangGraph graph "
        "(a compiled graph, a StateGraph or a function returning one)"
    )


Graph = Pregel[Any, Any, Any, Any]


class GraphRegistry:
    """Named graphs, each compiled with the manager's checkpointer."""

    def __init__(
        self,
        graphs: Mapping[str, Graph],
        default: str,
        *,
        deferred: Mapping[str, Callable[[], Graph]] | None = None,
    ) -> None:
        self._graphs = dict(graphs)
        # Graphs built at their first use: the built-in one on the offline model, which
        # cannot fail to build (its modules are ~2 MiB resident a server of users' own
        # graphs never needs).
        self._deferred = {k: v for k, v in (deferred or {}).items() if k not in self._graphs}
        self.default = default
        # Rendering an input schema takes pydantic ~15 ms for the built-in graph: once
        # per graph, not once per run started (the graphs never change once loaded).
        self._input_keys: dict[str, frozenset[str] | None] = {}

    @classmethod
    async def load(
        cls,
        checkpointer: BaseCheckpointSaver[Any] | None,
        *,
        specs: Mapping[str, str] | None = None,
        default: str | None = None,
        model: str | None = None,
    ) -> GraphRegistry:
        """Import every spec and check the model; a bad spec or model fails here."""

        def builtin() -> Graph:
            from code_hero.agents import build_code_hero_graph, make_chat_model

            return build_code_hero_graph(make_chat_model(model)).compile(
                checkpointer=checkpointer, name=BUILTIN_GRAPH
            )

        graphs: dict[str, Graph] = {}
        deferred: dict[str, Callable[[], Graph]] = {}
        if model is None:  # the offline model: nothing to check
            deferred[BUILTIN_GRAPH] = builtin
        else:
            graphs[BUILTIN_GRAPH] = builtin()
        for name, target in (specs or {}).items():
            obj = await _materialise(name, target, _load_target(name, target))
            if isinstance(obj, StateGraph):
                graphs[name] = obj.compile(checkpointer=checkpointer, name=name)
            else:
                graphs[name] = obj.copy(update={"checkpointer": checkpointer})
        chosen = default or BUILTIN_GRAPH
        if chosen not in graphs and chosen not in deferred:
            known = ", ".join(sorted({*graphs, *deferred}))
            raise ConfigurationError(f"default graph {chosen!r} is not loaded; known: {known}")
        return cls(graphs, chosen, deferred=deferred)

    def get(self, name: str | None) -> Graph:
        """The compiled graph (the default one for None); NotFoundError when unknown."""
        key = name or self.default
        graph = self._graphs.get(key)
        if graph is not None:
            return graph
        build = self._deferred.get(key)
        if build is None:
            known = ", ".join(sorted({*self._graphs, *self._deferred}))
            raise NotFoundError(f"unknown graph {key!r}; known graphs: {known}")
        # Synchronous, so no other task sees it half built.
        graph = self._graphs[key] = build()
        del self._deferred[key]
        return graph

    def names(self) -> list[str]:
        """Every graph name, the default first."""
        others = {*self._graphs, *self._deferred} - {self.default}
        return [self.default, *sorted(others)]

    def info(self) -> list[GraphInfo]:
        """Each graph with its agents (the catalog for code_hero, the nodes otherwise)."""
        return [GraphInfo(n, n == self.default, tuple(self._agents(n))) for n in self.names()]

    def _agents(self, name: str) -> Iterable[AgentInfo]:
        if name == BUILTIN_GRAPH:
            return [AgentInfo(a.name, a.team, a.description) for a in AGENTS.values()]
        nodes: Sequence[str] = [n for n in self._graphs[name].nodes if not n.startswith("__")]
        return [AgentInfo(n, None, f"node {n} of graph {name}") for n in nodes]

    def input_keys(self, name: str | None) -> frozenset[str] | None:
        """The keys the graph's input accepts (None when it takes any value)."""
        key = name or self.default
        if key not in self._input_keys:
            self._input_keys[key] = _input_keys(self.get(key))
        return self._input_keys[key]


def _input_keys(graph: Graph) -> frozenset[str] | None:
    """The keys of the graph's input schema (None: any value); its channels if none renders."""
    try:
        props = graph.get_input_jsonschema().get("properties")
    except Exception:  # a schema pydantic cannot render: fall back to the channels
        return frozenset(c for c in graph.channels if not c.startswith(("__", "branch:")))
    return frozenset(props) if isinstance(props, dict) else None
