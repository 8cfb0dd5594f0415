"""Where a webhook may be sent: URL checks and SSRF-safe resolution.

A destination is refused when any address its host resolves to is not a
public unicast one: loopback, private, shared (CGNAT), link-local (the cloud
metadata endpoints 169.254.169.254 and fd00:ec2::254 among them), multicast,
reserved or unspecified, IPv4-mapped forms included, unless the operator
allow-lists it (`CODE_HERO_WEBHOOK_ALLOW`: addresses and CIDR ranges). The
host is resolved once per attempt and the request connects to the checked
address itself (`Destination.address`), so a DNS answer that changes between
the check and the connection (DNS rebinding) cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from code_hero.errors import BadInputError, ConfigurationError

__all__ = [
    "METADATA_ADDRESSES",
    "Address",
    "Destination",
    "Network",
    "RefusedDestinationError",
    "check_url",
    "parse_allow_list",
    "refused",
    "resolve",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)


class RefusedDestinationError(Exception):
    """The URL's host is, or resolves to, an address webhooks may not reach."""


@dataclass(frozen=True)
class Destination:
    """A checked URL: its host, port and the one address to connect to."""

    scheme: str
    host: str
    port: int
    address: Address


def parse_allow_list(raw: str | None) -> tuple[Network, ...]:
    """`127.0.0.1,10.1.0.0/16` as networks (an address is a /32 or /128)."""
    networks: list[Network] = []
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigurationError(
                f"CODE_HERO_WEBHOOK_ALLOW: {item!r} is not an IP address or CIDR range"
            ) from None
    return tuple(networks)


def refused(address: Address, allow: Iterable[Network] = ()) -> bool:
    """True when webhooks may not reach `address` (see the module docstring)."""
    if any(address in net for net in allow):
        return False
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address inside an IPv6 one (mapped, 6to4, Teredo) is judged as itself.
        for inner in (address.ipv4_mapped, address.sixtofour, address.teredo and address.teredo[1]):
            if inner is not None and refused(inner, allow):
                return True
        if address.ipv4_mapped is not None:
            return False
        if address.is_site_local:
            return True
    return (
        address in METADATA_ADDRESSES
        or not address.is_global
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _split(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInputError(f"url {url!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadInputError(f"url must be http or https, got {url!r}")
    if not parts.hostname:
        raise BadInputError(f"url {url!r} names no host")
    if parts.username or parts.password:
        raise BadInputError("url may not carry credentials")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


def check_url(url: str, allow: Sequence[Network] = ()) -> str:
    """The URL, checked before it is stored: http(s), a host, and no refused literal address
    (BadInputError); host names are checked when a delivery resolves them."""
    if len(url) > 2048:
        raise BadInputError("url is longer than 2048 characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise BadInputError("url may not hold spaces or control characters")
    _, host, _ = _split(url)
    host = _relative(host)
    if _is_localhost(host):
        literal: Address = next((a for a in _LOCALHOST if refused(a, allow)), _LOCALHOST[0])
    else:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            numeric = _legacy_ipv4(host)
            if numeric is None:
                try:  # a name DNS can carry: labels of 1-63 characters, IDNA for the rest
                    host.encode("idna")
                except UnicodeError:
                    raise BadInputError(f"url {url!r} has no valid host name") from None
                return url
            literal = numeric
    if refused(literal, allow):
        raise BadInputError(
            f"url {url!r} points at {literal}, which webhooks may not reach "
            "(loopback, private, link-local or reserved); an operator can allow it "
            "with CODE_HERO_WEBHOOK_ALLOW"
        )
    return url


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address written as the resolver (inet_aton) and URL parsers also read one:
    a single number, hex or octal parts, fewer than four parts (`2130706433`,
    `0x7f000001`, `127.1`); None for a name."""
    if not host or any(c not in _NUMERIC_HOST for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


_NUMERIC_HOST = frozenset("0123456789abcdefxABCDEFX.")
# What `localhost` and `*.localhost` name, by definition (RFC 6761), whatever DNS or
# /etc/hosts says: a webhook to them must have both allowed.
_LOCALHOST: tuple[Address, ...] = (
    ipaddress.IPv4Address("127.0.0.1"),
    ipaddress.IPv6Address("::1"),
)


def _relative(host: str) -> str:
    """The host without the root's dot: "localhost." and "127.0.0.1." name what
    "localhost" and "127.0.0.1" do (an empty label, "a..", stays, to be refused)."""
    return host.removesuffix(".") if not host.endswith("..") else host


def _is_localhost(host: str) -> bool:
    return host == "localhost" or host.endswith(".localhost")  # urlsplit lower-cases it


async def resolve(url: str, allow: Sequence[Network] = ()) -> Destination:
    """Resolve the URL's host once; RefusedDestinationError when any address is refused."""
    try:
        scheme, host, port = _split(url)
    except BadInputError as exc:
        raise RefusedDestinationError(str(exc)) from None
    name = _relative(host)
    try:
        addresses: list[Address] = (
            list(_LOCALHOST) if _is_localhost(name) else [ipaddress.ip_address(name)]
        )
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                name, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise RefusedDestinationError(f"cannot resolve {host!r}: {exc}") from None
        # The scope of a link-local IPv6 answer ("fe80::1%eth0") does not change its class.
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise RefusedDestinationError(f"{host!r} resolves to no address")
    bad = [a for a in addresses if refused(a, allow)]
    if bad:
        raise RefusedDestinationError(
            f"{host!r} resolves to {bad[0]}, which webhooks may not reach "
            "(allow it with CODE_HERO_WEBHOOK_ALLOW)"
        )
    return Destination(scheme, host, port, addresses[0])
