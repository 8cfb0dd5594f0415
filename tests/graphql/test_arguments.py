"""Resolvers called without Strawberry's wrapper (schema.arguments): the same answers,
errors included, as Strawberry's own.

Each document runs on two schemas of the same types: Strawberry's own resolvers,
and `DirectResolver`s installed; data and errors (message, path, locations,
extensions) must be identical, and the arguments each resolver received too.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Any

import pytest
import strawberry
from strawberry.permission import BasePermission
from strawberry.relay import GlobalID
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionResult

from code_hero.errors import BadInputError
from code_hero.schema import build_schema
from code_hero.schema.arguments import DirectResolver, FlatInput, install_argument_resolvers
from code_hero.schema.errors import error_code
from code_hero.schema.scalars import JSON, SCALARS

# What each resolver call received, in call order (the schemas run one at a time).
SEEN: list[Any] = []


@strawberry.enum
class Color(Enum):
    RED = "red"
    GREEN = "green"


@strawberry.input
class Inner:
    tags: list[str] = strawberry.field(default_factory=lambda: ["d"])


@strawberry.input
class Filter:
    name: str | None = None
    color: Color = Color.RED
    inner: Inner | None = None
    any_of: list[Filter] | None = None


@strawberry.input
class Flat:
    """An input object of fields passed as given: built from a FlatInput plan."""

    word: str
    note: str | None = None
    color: Color | None = Color.GREEN
    data: JSON | None = strawberry.UNSET
    count: int | None = strawberry.field(default=3, name="howMany")


class Deny(BasePermission):
    message = "Not for you"

    def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return False


@strawberry.type
class Node:
    name: str

    @strawberry.field
    async def page(
        self,
        info: strawberry.Info,
        first: int | None = 20,
        after: str | None = None,
        namespace: str | None = "",
    ) -> str:
        SEEN.append((self.name, info.field_name, info.path.key, first, after, namespace))
        if first is not None and first > 100:
            raise BadInputError(f"first must be between 1 and 100, got {first}")
        return f"{self.name}:{first}:{after}:{namespace!r}"

    @strawberry.field
    def by_root(self, root: Node, tags: list[str] | None = ["d"]) -> str:  # noqa: B006
        SEEN.append(("root", root.name, tags))
        if tags is not None:
            tags.append("mutated")  # must not leak into the next request's default
        return root.name

    @strawberry.field
    def by_parent(self, parent: strawberry.Parent[Node], n: int = 1) -> str:
        SEEN.append(("parent", parent.name, n))
        return parent.name * n

    @strawberry.field(permission_classes=[Deny])
    def guarded(self, n: int = 1) -> str:
        return "never"


@strawberry.type
class Query:
    @strawberry.field
    async def node(self, info: strawberry.Info, id: strawberry.ID) -> Node | None:
        SEEN.append(("node", id, type(id).__name__))
        return None if id == "none" else Node(name=str(id))

    @strawberry.field
    async def nodes(
        self,
        info: strawberry.Info,
        first: int | None = 20,
        after: str | None = None,
        filter: Filter | None = None,
        order_by: Color | None = None,
    ) -> list[Node]:
        SEEN.append(("nodes", first, after, filter, order_by))
        return [Node(name=f"n{i}") for i in range(min(first or 0, 3))]

    @strawberry.field
    def plain(
        self,
        data: JSON | None = None,
        gid: GlobalID | None = None,
        mark: str | None = strawberry.UNSET,  # no default: left out when not given
    ) -> str:
        SEEN.append(("plain", data, gid, mark))
        return repr((data, gid, mark))

    @strawberry.field
    def flat(self, value: Flat | None = None, required: Flat | None = strawberry.UNSET) -> str:
        SEEN.append(("flat", value, required))
        return repr((value, required))

    @strawberry.field
    def maybe(
        self,
        word: strawberry.Maybe[str | None] = None,
        inner: strawberry.Maybe[Inner | None] = None,
        nested: Filter | None = None,
    ) -> str:
        # A null of a Maybe is Some(None), not None: converted even where null.
        SEEN.append(("maybe", word, inner, nested))
        return repr((word, inner, nested))

    @strawberry.field
    @staticmethod
    def static(word: str = "hi") -> str:
        SEEN.append(("static", word))
        return word


DOCUMENTS: list[tuple[str, dict[str, Any] | None]] = [
    ('{ node(id: "a") { page } }', None),
    ('{ node(id: "a") { page(first: 3, after: "c", namespace: "ns") } }', None),
    ('{ node(id: "a") { page(first: null, after: null, namespace: null) } }', None),
    ('{ node(id: "a") { page(first: 101) } }', None),  # BAD_USER_INPUT, located
    ('{ node(id: "a") { page(first: "x") } }', None),  # invalid: graphql-core's error
    ('{ node(id: "none") { page } }', None),
    ("{ node { page } }", None),  # a required argument missing
    ("{ node(id: 7) { a: page(first: 1) b: page(first: 2) page } }", None),  # aliases
    (
        "query($f: Int, $a: String, $ns: String) "
        "{ node(id: 1) { page(first: $f, after: $a, namespace: $ns) } }",
        {"f": 5, "ns": "x"},
    ),
    ("query($f: Int) { node(id: 1) { page(first: $f) } }", {}),  # unset variable: default
    ("query($f: Int) { node(id: 1) { page(first: $f) } }", {"f": None}),  # null variable
    ("query($f: Int) { node(id: 1) { page(first: $f) } }", {"f": 101}),
    ("query($f: Int) { node(id: 1) { page(first: $f) } }", {"f": "x"}),  # variable error
    (
        "query($s: Boolean!) "
        "{ node(id: 1) { page @skip(if: $s) x: page(first: 2) @include(if: $s) } }",
        {"s": True},
    ),
    ('{ node(id: "f") { ...F } } fragment F on Node { page(first: 4) byParent(n: 2) }', None),
    ("{ nodes { name } }", None),
    ("{ nodes(first: 2, orderBy: GREEN) { name page(first: 1) } }", None),
    ('{ nodes(filter: {name: "x", inner: {}}) { name } }', None),  # input defaults
    (
        '{ nodes(filter: {anyOf: [{color: GREEN, inner: {tags: ["a"]}}, {}]}) { name } }',
        None,
    ),
    ("query($f: Filter) { nodes(filter: $f) { name } }", {"f": {"anyOf": [{"color": "GREEN"}]}}),
    ("query($f: Filter) { nodes(filter: $f) { name } }", {"f": {"color": "BLUE"}}),
    ("{ nodes(filter: null, orderBy: null) { name } }", None),
    ("{ nodes(orderBy: BLUE) { name } }", None),
    ('{ node(id: "r") { byRoot byRoot2: byRoot(tags: ["t"]) byParent } }', None),
    ('{ node(id: "r") { byRoot(tags: []) again: byRoot } }', None),
    ('{ node(id: "g") { guarded } }', None),  # a permission class: Strawberry's wrapper
    ('{ plain(data: {a: [1, null]}, gid: "Tm9kZTox") }', None),
    ('{ plain(gid: "not a global id") }', None),
    ('{ static a: static(word: "yo") }', None),
    ('{ plain a: plain(mark: null) b: plain(mark: "m") }', None),
    ("query($m: String) { plain(mark: $m) }", {}),  # an unset variable: left out too
    ('{ flat(value: {word: "w"}) }', None),  # defaults, an implicit None, an UNSET
    ('{ flat(value: {word: "w", note: null, color: null, data: {a: 1}, howMany: 7}) }', None),
    ("{ flat flat2: flat(value: null, required: null) }", None),
    ("query($v: Flat) { flat(value: $v) }", {"v": {"word": "x", "data": [1, None]}}),
    ("query($v: Flat) { flat(value: $v) }", {"v": {"note": "no word"}}),  # invalid
    ("query($v: Flat) { flat(value: $v) }", {}),
    ("{ maybe }", None),
    ("{ maybe(word: null, inner: null, nested: null) }", None),
    ('{ maybe(word: "w", inner: {}, nested: {name: "n"}) }', None),
    (
        "query($w: String, $i: Inner, $n: Filter) { maybe(word: $w, inner: $i, nested: $n) }",
        {"w": None, "i": None, "n": None},
    ),
]


def schemas() -> tuple[strawberry.Schema, strawberry.Schema]:
    config = StrawberryConfig(scalar_map=SCALARS)
    plain = strawberry.Schema(query=Query, config=config)
    direct = strawberry.Schema(query=Query, config=config)
    install_argument_resolvers(direct)
    return plain, direct


def answer(result: ExecutionResult) -> tuple[Any, list[dict[str, Any]]]:
    return result.data, [e.formatted for e in result.errors or []]


async def run(schema: strawberry.Schema, document: str, variables: Any) -> tuple[Any, ...]:
    SEEN.clear()
    result = await schema.execute(document, variable_values=variables)
    return (*answer(result), [repr(seen) for seen in SEEN])


@pytest.mark.parametrize(("document", "variables"), DOCUMENTS)
async def test_same_answer_and_arguments_as_strawberry(
    document: str, variables: dict[str, Any] | None
) -> None:
    plain, direct = schemas()
    expected = await run(plain, document, variables)
    assert await run(direct, document, variables) == expected
    # Twice: a default list one request changed would show in the next.
    assert await run(direct, document, variables) == expected


async def test_arguments_reach_the_resolver_converted() -> None:
    _, direct = schemas()
    SEEN.clear()
    result = await direct.execute(
        "{ nodes(first: 1, filter: {anyOf: [{inner: {}}]}, orderBy: GREEN) { name }"
        " node(id: 5) { page } }"
    )
    assert not result.errors
    nodes, node, page = SEEN
    assert nodes[:3] == ("nodes", 1, None)
    assert isinstance(nodes[3], Filter) and isinstance(nodes[3].any_of[0], Filter)
    assert nodes[3].any_of[0].inner == Inner(tags=["d"])
    assert nodes[4] is Color.GREEN
    assert node == ("node", "5", "str")  # an ID literal arrives as a string
    assert page == ("5", "page", "page", 20, None, "")


async def test_out_of_range_argument_is_a_located_bad_user_input() -> None:
    _, direct = schemas()
    result = await direct.execute('{ node(id: "a") { x: page(first: 101) } }')
    assert result.data == {"node": None}  # page is non-null: the null bubbles up
    (error,) = result.errors or []
    assert error.path == ["node", "x"]
    assert isinstance(error.original_error, BadInputError)
    assert error_code(error) == "BAD_USER_INPUT"


def test_installed_only_where_strawberry_calls_the_resolver_with_nothing_between() -> None:
    _, direct = schemas()
    types = direct._schema.type_map

    def installed(type_name: str, field: str) -> bool:
        return isinstance(types[type_name].fields[field].resolve, DirectResolver)  # type: ignore[union-attr]

    for type_name, field in [("Query", "node"), ("Query", "nodes"), ("Node", "page")]:
        assert installed(type_name, field), field
    assert not installed("Node", "guarded")  # a permission class is a field extension
    assert not installed("Node", "name")  # no resolver of its own


def test_a_flat_input_object_is_built_from_a_plan_made_once() -> None:
    _, direct = schemas()
    types = direct._schema.type_map
    resolver = types["Query"].fields["flat"].resolve  # type: ignore[union-attr]
    assert isinstance(resolver, DirectResolver)
    plans = [type_ for _, _, type_ in resolver.arguments]
    assert all(isinstance(plan, FlatInput) and plan.cls is Flat for plan in plans)
    # Not for an input object with a list or another input object among its fields.
    nodes = types["Query"].fields["nodes"].resolve  # type: ignore[union-attr]
    assert not any(isinstance(type_, FlatInput) for _, _, type_ in nodes.arguments)


def test_the_gateway_builds_start_run_input_from_a_plan() -> None:
    resolver = build_schema()._schema.type_map["Mutation"].fields["startRun"].resolve  # type: ignore[union-attr]
    assert isinstance(resolver, DirectResolver)
    ((_, _, plan),) = [a for a in resolver.arguments if a[0] == "input"]
    assert isinstance(plan, FlatInput)
    assert plan.cls.__name__ == "StartRunInput"


def test_not_installed_where_the_schema_has_exception_handlers() -> None:
    schema = strawberry.Schema(query=Query, config=StrawberryConfig(scalar_map=SCALARS))
    # Strawberry's wrapper applies them; which handler does not matter here.
    schema.exception_handlers = (object(),)  # type: ignore[assignment]
    assert install_argument_resolvers(schema) == []


def test_the_gateway_schema_calls_its_list_resolvers_directly() -> None:
    types = build_schema()._schema.type_map
    for type_name, field in [("Query", "thread"), ("Query", "threads"), ("Thread", "checkpoints")]:
        assert isinstance(types[type_name].fields[field].resolve, DirectResolver), field  # type: ignore[union-attr]


SIBLING = asyncio.Event()
SIBLING_LOG: list[str] = []


@strawberry.type
class SiblingQuery:
    @strawberry.field
    async def slow(self) -> int:
        SIBLING_LOG.append("started")
        await SIBLING.wait()
        SIBLING_LOG.append("done")
        return 1

    @strawberry.field
    async def by_global(self, id: GlobalID) -> str:
        return id.node_id


@pytest.mark.parametrize("direct", [False, True])
async def test_an_async_fields_bad_argument_fails_as_strawberry_fails_it(direct: bool) -> None:
    """An async field's argument that fails to convert (a malformed GlobalID) fails from
    the field's awaitable, as under Strawberry: graphql-core then cancels its async
    siblings, rather than leaving them running after the answer was made."""
    schema = strawberry.Schema(query=SiblingQuery)
    if direct:
        assert "SiblingQuery.byGlobal" in install_argument_resolvers(schema)
    SIBLING.clear()
    SIBLING_LOG.clear()
    result = await schema.execute('{ slow byGlobal(id: "bad") }')
    assert result.data is None and result.errors
    SIBLING.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert SIBLING_LOG == ["started"]
