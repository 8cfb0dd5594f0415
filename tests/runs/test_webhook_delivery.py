"""Webhook destinations (SSRF checks), the retry schedule and the webhook settings."""

from __future__ import annotations

import ipaddress

import pytest

from code_hero.errors import BadInputError, ConfigurationError
from code_hero.runs.destinations import (
    RefusedDestinationError,
    check_url,
    parse_allow_list,
    refused,
    resolve,
)
from code_hero.runs.webhooks import DEFAULT_RETRY_SCHEDULE, parse_schedule
from code_hero.settings import webhooks_from_env


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "100.64.0.1",  # shared address space (CGNAT)
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "2002:7f00:1::",  # 6to4 around 127.0.0.1
        "2002:a00:1::",  # 6to4 around 10.0.0.1
        "fec0::1",  # site-local
        "::",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refused(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert not refused(ipaddress.ip_address(address))


def test_the_allow_list_admits_addresses_and_ranges() -> None:
    allow = parse_allow_list("127.0.0.1, 10.1.0.0/16")
    assert not refused(ipaddress.ip_address("127.0.0.1"), allow)
    assert not refused(ipaddress.ip_address("10.1.200.3"), allow)
    assert refused(ipaddress.ip_address("10.2.0.1"), allow)
    assert refused(ipaddress.ip_address("127.0.0.2"), allow)
    with pytest.raises(ConfigurationError):
        parse_allow_list("10.0.0.0/33")


def test_urls_are_checked_before_they_are_stored() -> None:
    assert check_url("https://hooks.example.com/x") == "https://hooks.example.com/x"
    assert check_url("http://hooks.internal:9/x")  # a name is checked when it is resolved
    for bad in (
        "ftp://example.com/",
        "http:///nohost",
        "http://u:p@example.com/",
        "http://10.0.0.1/",
        "http://a..b/hook",  # an empty label: no resolver takes it
        "http://" + "a" * 64 + ".com/",  # a label over 63 characters
        "http://example.com/\x01",
        # Numbers a resolver reads as an address (inet_aton): loopback, written otherwise.
        "http://2130706433/",
        "http://0x7f000002/",
        "http://127.1/",
        "http://0177.0.0.1/",
        # Names loopback by definition (RFC 6761), and absolute forms ("x.") of refused hosts.
        "http://localhost:9/x",
        "http://LocalHost./x",
        "http://app.localhost/x",
        "http://127.0.0.1./x",
    ):
        with pytest.raises(BadInputError):
            check_url(bad)
    assert check_url("http://cafe.example/x")  # hex letters in a name: a name
    assert check_url("https://bücher.de/") == "https://bücher.de/"  # IDNA on the wire
    assert check_url("http://10.1.0.7/", parse_allow_list("10.1.0.0/16"))
    # localhost is 127.0.0.1 and ::1 by definition: a webhook to it needs both allowed.
    with pytest.raises(BadInputError, match="points at ::1"):
        check_url("http://localhost:9/x", parse_allow_list("127.0.0.1"))
    assert check_url("http://localhost:9/x", parse_allow_list("127.0.0.1,::1"))
    assert check_url("http://example.com./x")  # an absolute name is still a name


async def test_resolution_checks_every_address() -> None:
    with pytest.raises(RefusedDestinationError):
        await resolve("http://localhost:8080/hook")
    allowed = await resolve("http://127.0.0.1:8080/hook", parse_allow_list("127.0.0.1"))
    assert str(allowed.address) == "127.0.0.1" and allowed.port == 8080
    # Named localhost, absolute or a subdomain: 127.0.0.1 and ::1, whatever the resolver says.
    both = parse_allow_list("127.0.0.1,::1")
    for url in ("http://localhost.:8080/hook", "http://app.localhost:8080/hook"):
        with pytest.raises(RefusedDestinationError):
            await resolve(url, parse_allow_list("127.0.0.1"))
        assert str((await resolve(url, both)).address) == "127.0.0.1"
    secure = await resolve("https://127.0.0.1/x", parse_allow_list("127.0.0.1"))
    assert secure.port == 443 and secure.host == "127.0.0.1"


def test_the_retry_schedule() -> None:
    assert parse_schedule(None) == DEFAULT_RETRY_SCHEDULE == (0, 5, 30, 120, 600, 1800, 3600)
    assert parse_schedule("0,0.2,0.4") == (0, 0.2, 0.4)
    for bad in ("0,x", "5,1", "-1,0"):
        with pytest.raises(ConfigurationError):
            parse_schedule(bad)


def test_webhook_settings_from_the_environment() -> None:
    settings = webhooks_from_env(
        {
            "CODE_HERO_WEBHOOK_RETRY_SCHEDULE": "0,1",
            "CODE_HERO_WEBHOOK_ALLOW": "127.0.0.1",
            "CODE_HERO_WEBHOOK_TIMEOUT": "2.5",
            "CODE_HERO_WEBHOOK_SECRET": "whsec_c2VjcmV0",
            "CODE_HERO_WEBHOOK_RETENTION": "3600",
        }
    )
    assert settings.schedule == (0, 1) and settings.timeout == 2.5
    assert settings.retention == 3600
    assert webhooks_from_env({}).retention == 7 * 24 * 3600
    with pytest.raises(ConfigurationError):
        webhooks_from_env({"CODE_HERO_WEBHOOK_RETENTION": "a week"})
    assert settings.allow == (ipaddress.ip_network("127.0.0.1/32"),)
    with pytest.raises(ConfigurationError):
        webhooks_from_env({"CODE_HERO_WEBHOOK_SECRET": "whsec_"})
