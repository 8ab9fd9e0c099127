"""Token buckets, address keys and trusted proxies of the OAuth rate limiter."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.config.model import RateLimitsConfig
from gateway.oauth.ratelimit import (
    LOG_INTERVAL,
    OAuthRateLimiter,
    TokenBucket,
    address_key,
    client_address,
    parse_trusted_proxies,
    retry_after,
)


class Clock:
    """A clock the test moves by hand, in seconds."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scope_from(host: str | None, forwarded: list[str] | None = None) -> Any:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded or []]
    return {
        "type": "http",
        "client": (host, 50000) if host else None,
        "headers": headers,
    }


def test_bucket_burst_then_rejected() -> None:
    """A new key gets exactly ``burst`` requests at once, then a wait."""
    bucket = TokenBucket(per_minute=60, burst=3, clock=Clock())
    waits = [bucket.acquire("a") for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(1.0)


def test_bucket_refill_at_rate() -> None:
    """Tokens come back at per_minute / 60 per second, capped at burst."""
    clock = Clock()
    bucket = TokenBucket(per_minute=30, burst=2, clock=clock)
    assert bucket.acquire("a") == 0.0
    assert bucket.acquire("a") == 0.0
    assert bucket.acquire("a") == pytest.approx(2.0)
    clock.now += 1.0
    assert bucket.acquire("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.acquire("a") == 0.0
    clock.now += 3600.0
    waits = [bucket.acquire("a") for _ in range(3)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2] > 0


def test_bucket_rejection_takes_no_token() -> None:
    """Rejected requests do not push the next allowed request further away."""
    clock = Clock()
    bucket = TokenBucket(per_minute=60, burst=1, clock=clock)
    bucket.acquire("a")
    for _ in range(10):
        assert bucket.acquire("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert bucket.acquire("a") == 0.0


def test_bucket_keys_independent() -> None:
    """One key's empty bucket does not limit another key."""
    bucket = TokenBucket(per_minute=60, burst=1, clock=Clock())
    assert bucket.acquire("a") == 0.0
    assert bucket.acquire("a") > 0
    assert bucket.acquire("b") == 0.0


def test_bucket_key_cap_evicts_least_recently_used() -> None:
    """Past max_keys the least recently used key is dropped, others kept."""
    bucket = TokenBucket(per_minute=1, burst=1, max_keys=2, clock=Clock())
    bucket.acquire("a")
    bucket.acquire("b")
    assert bucket.acquire("a") > 0
    bucket.acquire("c")
    assert len(bucket) == 2
    assert bucket.acquire("a") > 0
    assert bucket.acquire("b") == 0.0
    assert len(bucket) == 2


def test_bucket_invalid_settings_rejected() -> None:
    """A rate, burst or key cap below 1 raises ValueError."""
    with pytest.raises(ValueError, match="at least 1"):
        TokenBucket(per_minute=0, burst=1)
    with pytest.raises(ValueError, match="at least 1"):
        TokenBucket(per_minute=1, burst=0)


def test_bucket_should_log_once_per_interval() -> None:
    """A key's rejection is logged at most once per LOG_INTERVAL."""
    clock = Clock()
    bucket = TokenBucket(per_minute=60, burst=1, clock=clock)
    bucket.acquire("a")
    assert bucket.should_log("a") is True
    assert bucket.should_log("a") is False
    clock.now += LOG_INTERVAL - 1
    assert bucket.should_log("a") is False
    clock.now += 1
    assert bucket.should_log("a") is True


@pytest.mark.parametrize(
    ("wait", "expected"),
    [(0.001, 1), (0.5, 1), (1.0, 1), (1.01, 2), (2.9, 3), (59.0, 59)],
)
def test_retry_after_whole_seconds_at_least_one(wait: float, expected: int) -> None:
    """Retry-After rounds the wait up to whole seconds, never below 1."""
    assert retry_after(wait) == expected


def test_retry_after_matches_bucket_wait() -> None:
    """The register default (20/min) sets Retry-After 3 after the burst is spent."""
    bucket = TokenBucket(per_minute=20, burst=10, clock=Clock())
    for _ in range(10):
        assert bucket.acquire("a") == 0.0
    assert retry_after(bucket.acquire("a")) == 3


def test_address_key_ipv6_by_network() -> None:
    """IPv6 addresses of one /64 share a key; IPv4 and mapped IPv4 stay apart."""
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("unknown") == "unknown"


def test_client_address_ignores_forwarded_without_trust() -> None:
    """X-Forwarded-For is ignored unless the peer is a trusted proxy."""
    scope = scope_from("192.0.2.1", ["198.51.100.9"])
    assert client_address(scope, []) == "192.0.2.1"
    trusted = parse_trusted_proxies(["10.0.0.0/8"])
    assert client_address(scope, trusted) == "192.0.2.1"


def test_client_address_trusted_proxy_rightmost_untrusted() -> None:
    """Behind trusted proxies the rightmost untrusted entry is the client."""
    trusted = parse_trusted_proxies(["10.0.0.0/8", "192.0.2.1"])
    scope = scope_from("10.1.1.1", ["203.0.113.5, 198.51.100.9", "192.0.2.1"])
    assert client_address(scope, trusted) == "198.51.100.9"


def test_client_address_trusted_proxy_bad_entry_uses_hop() -> None:
    """A forwarded entry that is no IP address stops at the last trusted hop."""
    trusted = parse_trusted_proxies(["10.0.0.0/8"])
    scope = scope_from("10.1.1.1", ["not-an-ip, 10.2.2.2"])
    assert client_address(scope, trusted) == "10.2.2.2"
    assert client_address(scope_from("10.1.1.1"), trusted) == "10.1.1.1"


def test_client_address_missing_client_unknown() -> None:
    """A scope without a client address is keyed as 'unknown'."""
    assert client_address(scope_from(None), []) == "unknown"


def test_trusted_proxies_invalid_entry_named() -> None:
    """An entry that is no address or network raises ValueError naming it."""
    with pytest.raises(ValueError, match=r"'proxy\.local' is not an IP address"):
        parse_trusted_proxies(["10.0.0.1", "proxy.local"])


def test_limiter_groups_from_config() -> None:
    """The limiter builds one bucket set per group plus one per client_id."""
    config = msgspec.convert(
        {"register": {"per_minute": 6, "burst": 2}, "max_tracked_keys": 100},
        RateLimitsConfig,
    )
    limiter = OAuthRateLimiter(config, clock=Clock())
    register = limiter.by_address["register"]
    assert register.acquire("a") == 0.0
    assert register.acquire("a") == 0.0
    assert register.acquire("a") == pytest.approx(10.0)
    assert limiter.by_address["token"].burst == 30
    assert limiter.by_client_id.burst == 30
    assert limiter.by_address["authorize"].max_keys == 100
