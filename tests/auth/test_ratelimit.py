"""Rate limits: the setting's format and the token bucket, on a clock the test turns."""

from __future__ import annotations

import pytest

from code_hero.auth import RateLimit, TokenBuckets, parse_rate_limit
from code_hero.errors import ConfigurationError


def test_parse() -> None:
    assert parse_rate_limit("60/minute") == RateLimit(60, 60.0)
    assert parse_rate_limit("10/second") == RateLimit(10, 1.0)
    assert parse_rate_limit("1000 / hours") == RateLimit(1000, 3600.0)
    assert parse_rate_limit("5/10s") == RateLimit(5, 10.0)
    for off in (None, "", "0", "off"):
        assert parse_rate_limit(off) is None
    with pytest.raises(ConfigurationError, match="60/minute"):
        parse_rate_limit("lots")


def test_bucket_spends_refills_and_keeps_users_apart() -> None:
    now = [0.0]
    buckets = TokenBuckets(RateLimit(3, 60.0), clock=lambda: now[0])
    assert [buckets.retry_after("ann") for _ in range(3)] == [0, 0, 0]
    assert buckets.retry_after("ann") == 20  # one token every 20 s
    assert buckets.retry_after("bob") == 0  # a bucket per user
    now[0] = 19.0
    assert buckets.retry_after("ann") == 1
    now[0] = 20.5
    assert buckets.retry_after("ann") == 0
    now[0] = 10_000.0
    assert [buckets.retry_after("ann") for _ in range(4)] == [0, 0, 0, 20]  # capped at 3


def test_full_buckets_are_forgotten() -> None:
    now = [0.0]
    buckets = TokenBuckets(RateLimit(1, 1.0), clock=lambda: now[0], max_keys=10)
    for i in range(10):
        buckets.take(f"u{i}")
    now[0] = 5.0
    buckets.take("late")
    assert len(buckets._buckets) <= 2
