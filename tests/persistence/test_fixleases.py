"""The fixleases branch: the schema of `options` as the server reads it."""

from __future__ import annotations

from urllib.parse import quote

from code_hero.persistence.outagefile import same_database


def _url(options: str) -> str:
    return "postgresql://app@db.local/prod?options=" + quote(options)


def test_the_schema_compares_as_postgresql_folds_it() -> None:
    """Unquoted names fold to lower case, quoted ones do not; the setting's name is
    case-insensitive; spaces (escaped, as libpq takes them) around commas do not count."""
    assert same_database(_url("-c SEARCH_PATH=Tenant_A"), _url("-c search_path=tenant_a"))
    assert same_database(_url(r"-c search_path=a,\ b"), _url("-c search_path=a,b"))
    assert same_database(_url('-c search_path="T"'), _url('-c search_path="T"'))
    assert not same_database(_url('-c search_path="T"'), _url("-c search_path=t"))
    assert not same_database(_url("-c search_path=a"), _url("-c search_path=b"))
    assert not same_database(_url("-c search_path=a"), _url(""))
    assert same_database(_url("-c statement_timeout=5s"), _url(""))
