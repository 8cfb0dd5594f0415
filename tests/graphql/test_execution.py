"""Plain leaf and object fields completed directly (schema.execution): the same answers,
errors included.

Each document runs on two schemas of the same types: Strawberry's own executor,
and `LeafExecutor` with the plain leaf fields marked; data and errors (message,
path, locations) must be identical.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from datetime import datetime
from enum import Enum
from typing import Any, NewType

import graphql.execution.executor
import pytest
import strawberry
from graphql import DocumentNode, ExperimentalIncrementalExecutionResults, GraphQLResolveInfo
from graphql import parse as parse_document
from graphql.pyutils import Path
from strawberry.extensions import SchemaExtension
from strawberry.permission import BasePermission
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionResult

from code_hero.persistence.registry.cursors import thread_cursor
from code_hero.resolvers import mapping
from code_hero.schema import build_schema
from code_hero.schema.execution import (
    LeafExecutor,
    LeafField,
    ObjectField,
    _helpers,
    install_leaf_fields,
    plain_leaf,
)
from code_hero.schema.scalars import JSON, SCALARS
from tests.graphql.clients import data, gql
from tests.graphql.conftest import Server

START = "mutation($input: StartRunInput!) { startRun(input: $input) { id } }"


@strawberry.enum
class Color(Enum):
    RED = "red"
    GREEN = "green"


# A custom scalar that serializes an empty string to nothing (an error where it is served).
Blank = NewType("Blank", str)
SCALAR_MAP = {
    **SCALARS,
    Blank: strawberry.scalar(
        name="Blank", serialize=lambda value: value or None, parse_value=lambda value: value
    ),
}


class Deny(BasePermission):
    message = "Not for you"

    def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return False


@strawberry.type
class Part:
    name: str
    inner: list[Part] = strawberry.field(default_factory=list)

    @strawberry.field
    async def later(self) -> str:  # awaited below a directly read object
        if self.name == "late":
            raise ValueError("too late")
        return self.name


@strawberry.type
class Item:
    name: str
    maybe: str | None
    color: Color
    at: datetime
    data: JSON
    count: int
    tags: list[str]
    holes: list[str | None]
    blank: Blank | None
    parts: list[Part]
    owner: Part | None
    boss: Part
    secret: str = strawberry.field(permission_classes=[Deny])

    @strawberry.field
    def computed(self) -> str:  # a plain method: read directly too
        return self.name + "!"

    @strawberry.field
    def label(self, shout: bool = False) -> str:  # read directly where no argument is given
        return self.name.upper() if shout else self.name

    @strawberry.field
    def failing(self) -> str:
        if self.count == 3:
            raise ValueError("no count of three")
        return self.name

    @strawberry.field
    def described(self, info: strawberry.Info) -> str:  # needs an Info: not plain
        return f"{info.field_name} of {self.name}"

    @strawberry.field
    async def later(self) -> str:  # awaited: not plain
        return self.name


def item(**changes: Any) -> Item:
    values: dict[str, Any] = {
        "name": "a",
        "maybe": None,
        "color": Color.GREEN,
        "at": datetime(2026, 1, 2, 3, 4, 5),  # naive: served as UTC by the scalar
        "data": JSON({"k": [1, 2]}),
        "count": 3,
        "tags": ["x", "y"],
        "holes": ["x", None],
        "blank": "b",
        "parts": [Part(name="p"), Part(name="q")],
        "owner": None,
        "boss": Part(name="b", inner=[Part(name="i")]),
        "secret": "s",
    }
    return Item(**{**values, **changes})


ITEMS: dict[str, list[Item]] = {
    "good": [item(), item(name="b", color=Color.RED, maybe="m", tags=[])],
    "null_name": [item(), item(name=None)],
    "null_tag": [item(tags=["x", None])],
    "bad_count": [item(count="three")],
    "bad_color": [item(color="purple")],
    "tags_not_list": [item(tags=None), item(holes=None)],
    "blank": [item(blank="")],
    "null_part": [item(), item(parts=[Part(name="p"), Part(name=None)])],  # type: ignore[arg-type]
    "late_part": [item(), item(parts=[Part(name="p"), Part(name="late")])],
    "null_parts": [item(), item(parts=None)],
    "null_in_parts": [item(), item(parts=[Part(name="p"), None])],
    "str_parts": [item(), item(parts="p")],
    "bad_owner": [item(owner=Part(name="late")), item(owner=Part(name=None))],  # type: ignore[arg-type]
    "no_boss": [item(), item(boss=None)],
}


@strawberry.type
class Query:
    @strawberry.field
    def items(self, case: str = "good") -> list[Item]:
        return ITEMS[case]

    @strawberry.field
    def maybe_items(self, case: str = "good") -> list[Item] | None:
        return ITEMS[case]


class Shout(SchemaExtension):
    """An extension with a `resolve` hook: every field goes through it."""

    def resolve(self, _next: Any, root: Any, info: GraphQLResolveInfo, **kwargs: Any) -> Any:
        value = _next(root, info, **kwargs)
        return value.upper() if isinstance(value, str) else value


def schemas(
    config: StrawberryConfig | None = None, **options: Any
) -> tuple[strawberry.Schema, strawberry.Schema]:
    config = config or StrawberryConfig(scalar_map=SCALAR_MAP)
    plain = strawberry.Schema(query=Query, config=config, **options)
    fast = strawberry.Schema(
        query=Query, config=config, execution_context_class=LeafExecutor, **options
    )
    install_leaf_fields(fast)
    _plain_label(fast)
    return plain, fast


class KeepParsed(SchemaExtension):
    """Each document text parsed once, as the gateway's `Documents` keeps them: its
    executions share one AST."""

    parsed: dict[str, DocumentNode] = {}

    def on_parse(self) -> Any:
        ctx = self.execution_context
        if ctx.query is not None:
            if ctx.query not in KeepParsed.parsed:
                KeepParsed.parsed[ctx.query] = parse_document(ctx.query)
            ctx.graphql_document = KeepParsed.parsed[ctx.query]
        yield


def _plain_label(schema: strawberry.Schema) -> None:
    label = schema._schema.type_map["Item"].fields["label"]  # type: ignore[union-attr]
    label.resolve = plain_leaf(label, lambda source: source.label())


def answer(result: ExecutionResult) -> tuple[Any, list[dict[str, Any]]]:
    return result.data, [e.formatted for e in result.errors or []]


DOCUMENTS = [
    "{ items { name maybe color at data count tags holes blank } }",
    "{ items { n: name again: name, c: color } }",  # aliases, a field twice
    "{ items { ...F name } } fragment F on Item { name tags }",
    "{ items { ... on Item { color } __typename } }",
    "{ items { name @skip(if: true) color @include(if: false) tags @include(if: true) } }",
    '{ items(case: "null_name") { color name } }',  # non-null leaf: bubbles to data null
    '{ maybeItems(case: "null_name") { name } }',  # ...to the nullable list
    '{ maybeItems(case: "null_tag") { tags holes } }',  # a null in [String!]!
    '{ maybeItems(case: "bad_count") { count } }',  # Int cannot represent it
    '{ maybeItems(case: "bad_color") { color } }',  # not a value of the enum
    '{ maybeItems(case: "tags_not_list") { tags holes } }',
    '{ items { blank } maybeItems(case: "blank") { blank } }',  # serialized to null
    "{ maybeItems { secret name } }",  # a permission class: refused, not read
    "{ items { computed name described later } }",  # resolvers of their own
    "{ maybeItems { name failing } }",  # a method that raises
    "{ items { label shout: label(shout: true) quiet: label(shout: false) } }",
    'query($s: Boolean) { items(case: "null_name") { label(shout: $s) } }',
    '{ maybeItems(case: "bad_count") { failing } }',
    "{ items { owner { name } boss { name later } parts { name later } } }",  # objects
    "{ items { parts { ... on Part { name } n: name __typename } owner { __typename } } }",
    '{ maybeItems(case: "null_part") { name parts { name } } }',  # bubbles up the list
    '{ maybeItems(case: "late_part") { parts { name later } } }',  # ...when awaited
    '{ maybeItems(case: "late_part") { boss { later } parts { later } } }',
    '{ maybeItems(case: "null_parts") { parts { name } } }',
    '{ maybeItems(case: "null_in_parts") { parts { name } } }',
    '{ maybeItems(case: "str_parts") { parts { name } } }',
    '{ maybeItems(case: "bad_owner") { owner { name later } } }',  # a nullable object
    '{ maybeItems(case: "no_boss") { boss { name } } }',  # null for a non-null object
    "{ items { parts @include(if: true) { name } boss @skip(if: false) { name } } }",
]


@pytest.mark.parametrize("document", DOCUMENTS)
async def test_same_answer_as_strawberry(document: str) -> None:
    plain, fast = schemas()
    expected = answer(await plain.execute(document))
    assert answer(await fast.execute(document)) == expected


@pytest.mark.parametrize("document", DOCUMENTS)
async def test_same_answer_as_strawberry_each_time_a_kept_document_runs(document: str) -> None:
    """A document parsed once and run again (what it collects may be shared): the same
    answers at every run, errors included."""
    plain, fast = schemas(extensions=[KeepParsed])
    expected = answer(await plain.execute(document))
    for _ in range(3):
        assert answer(await fast.execute(document)) == expected


async def test_a_kept_document_without_directives_collects_its_fields_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its later runs collect no field anew; one with a directive collects at each run
    (what @skip and @include select depends on the run's variables)."""
    collected: list[str] = []
    collect = graphql.execution.executor.collect_subfields

    def counting(*args: Any, **kwargs: Any) -> Any:
        collected.append("collected")
        return collect(*args, **kwargs)

    monkeypatch.setattr(graphql.execution.executor, "collect_subfields", counting)
    _plain, fast = schemas(extensions=[KeepParsed])
    document = "{ items { name parts { name } boss { ...B } } } fragment B on Part { name }"
    first = answer(await fast.execute(document))
    assert first[1] == [] and collected
    collected.clear()
    for _ in range(2):
        assert answer(await fast.execute(document)) == first
    assert collected == []
    document = "query($s: Boolean!) { items { name @skip(if: $s) parts { name } } }"
    for skip in (True, False, True):
        result = answer(await fast.execute(document, variable_values={"s": skip}))
        assert ("name" in result[0]["items"][0]) is not skip
    assert len(collected) == 3 * 2  # Item's fields and Part's, at each run


async def test_errors_of_a_leaf_keep_their_message_path_and_locations() -> None:
    plain, fast = schemas()
    result = await fast.execute('{ maybeItems(case: "null_name") { color name } }')
    assert result.data == {"maybeItems": None}
    [error] = answer(result)[1]
    assert error["message"] == "Cannot return null for non-nullable field Item.name."
    assert error["path"] == ["maybeItems", 1, "name"]
    assert error["locations"] == [{"line": 1, "column": 41}]
    assert answer(await plain.execute('{ maybeItems(case: "null_name") { color name } }')) == (
        answer(result)
    )


async def test_variables_in_skip_and_include() -> None:
    plain, fast = schemas(extensions=[KeepParsed])  # one AST, run with either value
    document = "query($s: Boolean!) { items { name @skip(if: $s) tags @include(if: $s) } }"
    for skip in (True, False, True, False):
        expected = answer(await plain.execute(document, variable_values={"s": skip}))
        assert answer(await fast.execute(document, variable_values={"s": skip})) == expected


async def incremental(schema: strawberry.Schema, document: str) -> list[Any]:
    """Every payload of an operation with @defer, formatted, in the order sent."""
    result = await schema.execute(document)
    assert isinstance(result, ExperimentalIncrementalExecutionResults), result
    payloads = [result.initial_result.formatted]
    async for subsequent in result.subsequent_results:
        payloads.append(subsequent.formatted)
    return payloads


DEFERRED = [
    # A deferred fragment in each object of a list, and in an object of each item: their
    # selection has new defer usages (graphql-core's delivery groups, not the plan).
    '{ items { name parts { name ... @defer { later } } boss { ... @defer(label: "b") {'
    " name later } } } }",
    # Objects inside a deferred fragment: executed in a delivery group.
    "{ items { name ... @defer { parts { name later } boss { name } owner { name } } } }",
    # ...and a fragment deferred below one (its delivery group's child).
    "{ items { ... @defer { boss { name inner { name ... @defer { later } } } } } }",
    '{ maybeItems(case: "late_part") { ... @defer { parts { name later } } name } }',
]


@pytest.mark.parametrize("document", DEFERRED)
async def test_deferred_fragments_as_strawberry(document: str) -> None:
    plain, fast = schemas(
        config=StrawberryConfig(
            scalar_map=SCALAR_MAP, enable_experimental_incremental_execution=True
        ),
        extensions=[KeepParsed],
    )
    expected = await incremental(plain, document)
    assert len(expected) > 1  # something was deferred
    for _ in range(2):  # the same AST again
        assert await incremental(fast, document) == expected


async def test_resolver_middleware_sees_every_field() -> None:
    plain, fast = schemas(extensions=[Shout])
    document = "{ items { name tags computed } }"
    result = answer(await fast.execute(document))
    assert result == answer(await plain.execute(document))
    assert result[0]["items"][0] == {"name": "A", "tags": ["x", "y"], "computed": "A!"}


class Counting(LeafExecutor):
    infos: list[str] = []

    def build_resolve_info(self, field_def: Any, field_nodes: Any, parent_type: Any, path: Path):  # type: ignore[no-untyped-def]
        Counting.infos.append(f"{parent_type.name}.{field_nodes[0].name.value}")
        return super().build_resolve_info(field_def, field_nodes, parent_type, path)


async def test_plain_leaves_skip_the_field_machinery() -> None:
    schema = strawberry.Schema(
        query=Query,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        execution_context_class=Counting,
    )
    install_leaf_fields(schema)
    _plain_label(schema)
    Counting.infos = []
    document = "{ items { name color tags computed described later label l: label(shout: true) } }"
    result = await schema.execute(document)
    assert result.errors is None
    # Only the fields with an argument given (Query.items, label(shout:)), an Info or an
    # async resolver got one.
    per_item = ["Item.described", "Item.later", "Item.label"]
    assert Counting.infos == ["Query.items", *per_item, *per_item]
    Counting.infos = []
    result = await schema.execute("{ items { owner { name } boss { name } parts { name } } }")
    assert result.errors is None and Counting.infos == ["Query.items"]


class FieldCalls(LeafExecutor):
    calls: list[str] = []

    def execute_field(
        self,
        parent_type: Any,
        source: Any,
        field_details_list: Any,
        path: Path,
        position_context: Any,
    ) -> Any:  # type: ignore[override]
        FieldCalls.calls.append(f"{parent_type.name}.{field_details_list[0].node.name.value}")
        return super().execute_field(
            parent_type, source, field_details_list, path, position_context
        )


async def test_plain_fields_are_completed_in_their_objects_loop() -> None:
    schema = strawberry.Schema(
        query=Query,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        execution_context_class=FieldCalls,
    )
    install_leaf_fields(schema)
    _plain_label(schema)
    FieldCalls.calls = []
    document = (
        "{ items { name color tags computed label described later __typename"
        " owner { name } boss { name } parts { name } } }"
    )
    result = await schema.execute(document)
    assert result.errors is None
    # Only the fields that are not plain (a resolver with an argument, one with an Info,
    # an async one, a meta field) were handed to execute_field; the leaves and the
    # objects of each item, and theirs, were completed in the loop over its selection.
    per_item = ["Item.described", "Item.later", "Item.__typename"]
    assert FieldCalls.calls == ["Query.items", *per_item, *per_item]
    # A plain field whose value is not plain goes through graphql-core, with its error.
    FieldCalls.calls = []
    result = await schema.execute('{ maybeItems(case: "null_name") { color name } }')
    assert result.data == {"maybeItems": None}
    assert FieldCalls.calls == ["Query.maybeItems"]
    assert [e.path for e in result.errors or []] == [["maybeItems", 1, "name"]]


async def test_an_operation_leaves_no_reference_cycle() -> None:
    """An operation's executor, and all it refers to, go when the operation ends: not at
    the garbage collector's next pass (graphql-core's resolver helpers, bound methods
    of the executor it holds, made a cycle of every operation). The gateway's schema
    parses and validates a document once (parsing and validating make cycles too)."""
    schema = build_schema()
    document = "{ __typename again: __typename }"
    assert not (await schema.execute(document)).errors  # parsed, validated and kept
    # What earlier tests left, to the last: a schema that what its operations shared
    # (schema.execution's `_Shared`) kept goes a pass after those operations' ASTs.
    while gc.collect():
        pass
    gc.disable()
    try:
        for _ in range(3):
            result = await schema.execute(document)
            assert result.data == {"__typename": "Query", "again": "Query"}
        del result
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_work_tracked_after_its_operation_ended_is_still_settled() -> None:
    """The helpers hold their executor weakly: work a resolver hands them once it is gone
    is settled all the same (as graphql-core settles it), not dropped."""

    class Executor:
        is_awaitable = staticmethod(inspect.isawaitable)

        def track_async_work(self, values: Any) -> None:
            tracked.extend(values)

    tracked: list[Any] = []
    executor = Executor()
    helpers = _helpers(executor)  # type: ignore[arg-type]
    helpers.track([1])
    assert tracked == [1]  # alive: its own
    del executor
    ran: list[str] = []

    async def work() -> None:
        ran.append("ran")

    helpers.track([work(), 2])
    for _ in range(3):
        await asyncio.sleep(0)
    assert ran == ["ran"] and tracked == [1]


def test_the_gateway_schema_marks_plain_leaves_only() -> None:
    schema = build_schema()
    assert schema.execution_context_class is LeafExecutor
    types = schema._schema.type_map

    def marked(type_name: str, field: str) -> bool:
        return isinstance(types[type_name].fields[field].resolve, LeafField)  # type: ignore[union-attr]

    for name in ("id", "step", "source", "next", "metadata", "createdAt", "parentId"):
        assert marked("Checkpoint", name), name
    for name in ("id", "status", "createdAt", "updatedAt", "metadata"):
        assert marked("Thread", name), name
    assert marked("CheckpointEdge", "cursor")
    assert marked("PageInfo", "hasNextPage")
    for type_name, field in [
        ("ThreadEdge", "node"),
        ("ThreadConnection", "edges"),
        ("ThreadConnection", "pageInfo"),
        ("CheckpointEdge", "node"),
    ]:
        assert isinstance(types[type_name].fields[field].resolve, ObjectField), field  # type: ignore[union-attr]
    # Fields with resolvers of their own keep graphql-core's path.
    assert marked("Checkpoint", "values")  # where `keys` is not given
    for type_name, field in [
        ("Checkpoint", "updatedBy"),
        ("Checkpoint", "pendingWrites"),
        ("Thread", "values"),
        ("CheckpointEdge", "node"),
        ("Query", "thread"),
    ]:
        assert not marked(type_name, field), (type_name, field)


async def test_edges_make_their_cursors_only_when_asked(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[str] = []

    def counted(record: Any, order: Any = None) -> str:
        cursor = thread_cursor(record, order)
        made.append(cursor)
        return cursor

    monkeypatch.setattr(mapping, "thread_cursor", counted)
    for _ in range(3):
        await gql(server.http, START, {"input": {"message": "hi", "wait": True}})
    page = "{ threads(first: 2) { edges { node { id } } pageInfo { endCursor } } }"
    assert len(data(await gql(server.http, page))["threads"]["edges"]) == 2
    assert made == []  # endCursor comes with the page; no edge's cursor was made
    listed = data(await gql(server.http, "{ threads(first: 2) { edges { cursor } } }"))
    cursors = [edge["cursor"] for edge in listed["threads"]["edges"]]
    assert cursors == made and len(made) == 2
    after = "query($a: String) { threads(first: 5, after: $a) { edges { node { id } } } }"
    rest = data(await gql(server.http, after, {"a": cursors[0]}))["threads"]["edges"]
    assert len(rest) == 2  # the cursor works as `after`


async def test_enum_members_are_named_without_strawberrys_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Strawberry names an enum member by comparing it with each of the enum's values;
    a plain enum leaf names a member by a look-up made when the fields are marked, and
    leaves anything else (not a member: an error) to Strawberry's."""
    from strawberry.schema.schema_converter import CustomGraphQLEnumType

    scans: list[Any] = []
    scan = CustomGraphQLEnumType.coerce_output_value

    def counted(self: CustomGraphQLEnumType, value: Any) -> Any:
        scans.append(value)
        return scan(self, value)

    monkeypatch.setattr(CustomGraphQLEnumType, "coerce_output_value", counted)
    plain, fast = schemas()
    scans.clear()
    document = "{ items { color } }"
    assert answer(await fast.execute(document)) == answer(await plain.execute(document))
    assert scans == [Color.GREEN, Color.RED]  # Strawberry's executor's, not the fast one's
    scans.clear()
    document = '{ maybeItems(case: "bad_color") { color } }'
    assert answer(await fast.execute(document)) == answer(await plain.execute(document))
    assert scans and set(scans) == {"purple"}  # not a member: Strawberry's, on both


class Folded(Enum):
    """Members equal (and hashed alike) by their value's lower case: two members, not
    aliases (Enum makes aliases of equal *values*, and "UP" != "up")."""

    UP = "UP"
    LOW = "up"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Folded) and self.value.lower() == other.value.lower()

    def __hash__(self) -> int:
        return hash(self.value.lower())


FoldedEnum = strawberry.enum(Folded)


@strawberry.type
class FoldedItem:
    one: FoldedEnum
    many: list[FoldedEnum]
    maybe: FoldedEnum | None


@strawberry.type
class FoldedQuery:
    @strawberry.field
    def items(self) -> list[FoldedItem]:
        return [
            FoldedItem(one=Folded.UP, many=[Folded.UP, Folded.LOW], maybe=None),
            FoldedItem(one=Folded.LOW, many=[], maybe=Folded.UP),
        ]


async def test_enum_members_equal_under_their_own_eq_keep_their_names() -> None:
    """Review (rgql): Strawberry names a member by comparing `.value`s; a look-up keyed
    by the members themselves uses the enum's own __eq__/__hash__, which may hold two
    distinct members equal, and then serves one member's name for the other."""
    plain = strawberry.Schema(query=FoldedQuery)
    fast = strawberry.Schema(query=FoldedQuery, execution_context_class=LeafExecutor)
    install_leaf_fields(fast)
    document = "{ items { one many maybe } }"
    expected = answer(await plain.execute(document))
    assert expected[0] == {
        "items": [
            {"one": "UP", "many": ["UP", "LOW"], "maybe": None},
            {"one": "LOW", "many": [], "maybe": "UP"},
        ]
    }
    assert answer(await fast.execute(document)) == expected
