"""Which resolved addresses an outbound fetch of a client-supplied URL may reach.

The gateway fetches Client ID Metadata Documents, and their ``jwks_uri``,
from URLs that any client chooses. To keep those fetches away from internal
services and cloud metadata endpoints (server-side request forgery), every
address the host resolves to must be public.

Several IPv6 forms carry an IPv4 address, and a network that routes them
reaches that IPv4 address. They are IPv4-mapped (``::ffff:0:0/96``),
IPv4-translated (``::ffff:0:0:0/96``, RFC 2765), IPv4-compatible (``::/96``,
deprecated by RFC 4291), 6to4 (``2002::/16``, RFC 3056) and the NAT64
well-known prefix (``64:ff9b::/96``, RFC 6052). For these the embedded IPv4
address must be public. The local-use NAT64 prefix ``64:ff9b:1::/48`` (RFC 8215) is
rejected as a whole, because the position of the IPv4 address inside it
depends on the operator's prefix length. Teredo (``2001::/32``) is rejected
because Python's ``ipaddress`` counts it as not global.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network

__all__ = ["embedded_ipv4", "is_public_address"]

_NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = IPv6Network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = IPv6Network("::/96")
_IPV4_TRANSLATED = IPv6Network("::ffff:0:0:0/96")
_LOW_32_BITS = 0xFFFFFFFF


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """Return the IPv4 address that an IPv6 address carries, or None.

    Covers the IPv4-mapped, IPv4-translated, IPv4-compatible, 6to4 and
    well-known NAT64 forms. ``::`` and ``::1`` carry none.
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64_WELL_KNOWN or address in _IPV4_TRANSLATED:
        return IPv4Address(int(address) & _LOW_32_BITS)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return IPv4Address(int(address) & _LOW_32_BITS)
    return None


def is_public_address(
    address: IPv4Address | IPv6Address, *, allow_loopback: bool
) -> bool:
    """Return whether an outbound fetch may connect to ``address``.

    An address is public when it is global unicast, after unwrapping an
    embedded IPv4 address (see the module docstring). A loopback address,
    also an embedded one, is allowed only with ``allow_loopback``, which is
    for development.
    """
    if isinstance(address, IPv6Address):
        if address in _NAT64_LOCAL_USE:
            return False
        embedded = embedded_ipv4(address)
        if embedded is not None:
            address = embedded
    if address.is_loopback:
        return allow_loopback
    return address.is_global and not address.is_multicast
