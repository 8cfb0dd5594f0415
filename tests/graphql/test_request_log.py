"""Request errors' WARNINGs, one a minute per kind (review of pgfault)."""

from __future__ import annotations

import logging

import psycopg
import pytest

from code_hero.schema.build import build_schema
from tests.graphql.test_contention import _as_field_error


def test_a_second_damaged_relation_is_warned_of_too(caplog: pytest.LogCaptureFixture) -> None:
    # The client is told "the server's log has the database's own error"; keyed by what
    # the client is told, a second damaged relation within the minute goes to DEBUG
    # only, and its relation is in no WARNING line.
    schema = build_schema()
    first = psycopg.errors.DataCorrupted("invalid page in block 7 of relation base/5/16384")
    second = psycopg.errors.IndexCorrupted('index "runs_pkey" contains unexpected zero page')
    with caplog.at_level(logging.DEBUG, logger="code_hero.graphql"):
        schema.process_errors([_as_field_error(first)])
        schema.process_errors([_as_field_error(second)])
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.name == "code_hero.graphql" and r.levelno >= logging.WARNING
    ]
    assert any("runs_pkey" in line for line in warned), warned


def test_damage_across_many_blocks_is_warned_of_once(caplog: pytest.LogCaptureFixture) -> None:
    # One damaged relation read at many blocks (a table whose pages are zeroed, a page of
    # threads after another): the database's first line names the block, so keyed by
    # it every request is news of its own, and past the 64 kinds remembered the oldest
    # is forgotten and warned of again: one WARNING per request, none held at DEBUG.
    schema = build_schema()
    with caplog.at_level(logging.DEBUG, logger="code_hero.graphql"):
        for block in range(200):
            corrupted = f"invalid page in block {block} of relation base/5/16384"
            schema.process_errors([_as_field_error(psycopg.errors.DataCorrupted(corrupted))])
    warned = [
        r for r in caplog.records if r.name == "code_hero.graphql" and r.levelno >= logging.WARNING
    ]
    assert len(warned) == 1, len(warned)
