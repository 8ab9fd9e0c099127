"""Which resolved addresses the gateway may fetch client metadata from.

No test here opens a connection: the checks run on address literals.
"""

from __future__ import annotations

import ipaddress

import pytest

from gateway.oauth.client_metadata import ClientMetadataError, ClientMetadataResolver
from gateway.oauth.public_addresses import embedded_ipv4, is_public_address
from gateway.store import MemoryStore

# IPv6 forms that carry an IPv4 address, each embedding a non-public one.
EMBEDDED_PRIVATE = [
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix: 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64: 127.0.0.1
    "64:ff9b::a00:1",  # NAT64: 10.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4: 169.254.169.254
    "2002:7f00:1::1",  # 6to4: 127.0.0.1
    "2002:a00:1::1",  # 6to4: 10.0.0.1
    "::a9fe:a9fe",  # IPv4-compatible: 169.254.169.254
    "::7f00:1",  # IPv4-compatible: 127.0.0.1
    "::ffff:0:a9fe:a9fe",  # IPv4-translated: 169.254.169.254
    "::ffff:169.254.169.254",  # IPv4-mapped
]

NOT_PUBLIC = [
    *EMBEDDED_PRIVATE,
    "64:ff9b:1::a9fe:a9fe",  # local-use NAT64 prefix, never public
    "64:ff9b:1::808:808",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "169.254.169.254",
    "10.0.0.1",
    "100.64.0.1",
    "0.0.0.0",
    "::",
    "fd00:ec2::254",
    "fe80::1",
    "224.0.0.1",
    "ff02::1",
]

PUBLIC = ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808"]


@pytest.mark.parametrize("literal", NOT_PUBLIC)
def test_is_public_address_embedded_or_private_rejected(literal: str) -> None:
    """Private addresses, also inside an IPv6 wrapper, are not public."""
    address = ipaddress.ip_address(literal)
    assert not is_public_address(address, allow_loopback=False)


@pytest.mark.parametrize("literal", PUBLIC)
def test_is_public_address_public_accepted(literal: str) -> None:
    """Global unicast addresses, and NAT64 of a public IPv4 one, are public."""
    address = ipaddress.ip_address(literal)
    assert is_public_address(address, allow_loopback=False)


@pytest.mark.parametrize("literal", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_is_public_address_loopback_only_when_allowed(literal: str) -> None:
    """Loopback addresses pass only with allow_loopback (development)."""
    address = ipaddress.ip_address(literal)
    assert is_public_address(address, allow_loopback=True)
    assert not is_public_address(address, allow_loopback=False)


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
        ("2002:a9fe:a9fe::1", "169.254.169.254"),
        ("::a9fe:a9fe", "169.254.169.254"),
        ("::ffff:0:a9fe:a9fe", "169.254.169.254"),
        ("::ffff:a9fe:a9fe", "169.254.169.254"),
    ],
)
def test_embedded_ipv4_unwrapped(literal: str, expected: str) -> None:
    """Each IPv6 form that embeds an IPv4 address yields that address."""
    address = ipaddress.IPv6Address(literal)
    assert embedded_ipv4(address) == ipaddress.IPv4Address(expected)


@pytest.mark.parametrize("literal", ["::", "::1", "2606:4700::1111"])
def test_embedded_ipv4_plain_ipv6_none(literal: str) -> None:
    """An ordinary IPv6 address, and :: and ::1, embed nothing."""
    assert embedded_ipv4(ipaddress.IPv6Address(literal)) is None


@pytest.mark.anyio
@pytest.mark.parametrize("literal", EMBEDDED_PRIVATE)
async def test_metadata_resolver_embedded_private_host_forbidden(
    literal: str,
) -> None:
    """A client_id host that embeds a private IPv4 address is never fetched."""
    resolver = ClientMetadataResolver(MemoryStore(), allow_loopback=False)
    with pytest.raises(ClientMetadataError) as info:
        await resolver._checked_addresses(literal, 443)
    assert info.value.reason == "forbidden_address"
