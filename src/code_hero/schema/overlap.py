"""A bound on the work of graphql-core's OverlappingFieldsCanBeMergedRule, checked
before validation runs it.

That rule compares, in every selection set, each pair of fields that answer under
the same name, each spread fragment with the set's fields, and each pair of the
fragments spread there (`find_conflicts_within_selection_set`). Its work grows with
the square of those counts: 600 copies of `health { status }` (11 KB) held the event
loop 1.2 s, 600 one-field fragments spread side by side (32 KB) 2 s, while a real
client's selection sets repeat a name a few times at most. `merge_work` prices those
comparisons (and its own walk) from the document alone, stopping once past a limit,
so a document that would hold the loop is refused before the rule starts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)

__all__ = ["MAX_MERGE_WORK", "merge_work"]

# The price of one comparison of two fields (or two fragments), in units of one node
# visited: about 8 us against 1 (graphql-core 3.3, this machine).
PAIR = 8
# About 50 ms of the rule's work; a client's largest documents price a few thousand.
MAX_MERGE_WORK = 50_000


def merge_work(document: DocumentNode, limit: int = MAX_MERGE_WORK) -> int:
    """An estimate of OverlappingFieldsCanBeMergedRule's work on `document`, in nodes
    visited, counted up to `limit + 1` (then it stops)."""
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    tops: dict[str, Counter[str]] = {}  # each fragment's fields by name, as collected
    work = 0

    def top(name: str) -> Counter[str]:
        nonlocal work
        if name not in tops:
            fragment = fragments.get(name)
            keys: Counter[str] = Counter()
            if fragment is not None:
                work += _collect(fragment.selection_set, keys, {})
            tops[name] = keys
        return tops[name]

    for selection_set in _selection_sets(document):
        keys: Counter[str] = Counter()
        spreads: dict[str, None] = {}
        work += _collect(selection_set, keys, spreads)
        work += PAIR * sum(n * (n - 1) // 2 for n in keys.values())
        names = list(spreads)
        for i, name in enumerate(names):
            fields = top(name)
            work += 1 + PAIR * sum(n * keys[k] for k, n in fields.items() if k in keys)
            for other in names[i + 1 :]:
                if work > limit:
                    return limit + 1
                theirs = top(other)
                work += PAIR * (1 + sum(n * theirs[k] for k, n in fields.items() if k in theirs))
        if work > limit:
            return limit + 1
    return work


def _collect(selection_set: SelectionSetNode, keys: Counter[str], spreads: dict[str, None]) -> int:
    """Add the set's fields by response name to `keys` and the fragments it spreads to
    `spreads`, through its inline fragments (as the rule collects them); the nodes visited."""
    visited = 0
    stack = [selection_set]
    while stack:
        for node in stack.pop().selections:
            visited += 1
            if isinstance(node, FieldNode):
                keys[(node.alias or node.name).value] += 1
            elif isinstance(node, InlineFragmentNode):
                stack.append(node.selection_set)
            elif isinstance(node, FragmentSpreadNode):
                spreads[node.name.value] = None
    return visited


def _selection_sets(document: DocumentNode) -> Iterator[SelectionSetNode]:
    """Every selection set of the document, as validation visits each."""
    stack = [
        d.selection_set
        for d in document.definitions
        if isinstance(d, (OperationDefinitionNode, FragmentDefinitionNode))
    ]
    while stack:
        selection_set = stack.pop()
        yield selection_set
        for node in selection_set.selections:
            if isinstance(node, (FieldNode, InlineFragmentNode)) and node.selection_set:
                stack.append(node.selection_set)
