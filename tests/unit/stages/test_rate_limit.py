"""The buckets and the settings of the ``rate_limit`` stage."""

from __future__ import annotations

import msgspec
import pytest
from structlog.testing import capture_logs

from gateway.chains import plan_backend_chains
from gateway.config import load_config_text
from gateway.errors import ConfigError
from gateway.facts import Principal
from gateway.stages.rate_limit import (
    AgentBuckets,
    RateLimitConfig,
    RateLimitStage,
    bucket_key,
)

CONFIG = """
server: {{public_url: "http://127.0.0.1:8000"}}
upstream: {{issuer: "http://127.0.0.1:9000", client_id: gw, client_secret: s}}
agents:
  cursor: {{match: {{client_name: cursor}}, backends: [partners]}}
backends:
  partners:
    path: /partners/mcp
    url: http://127.0.0.1:8002/mcp
    auth: {{kind: static-key, header: X-Api-Key, value: k}}
pipeline: [{pipeline}]
stages:
  rate_limit:
{settings}
"""
CHAIN = (
    "audit, authenticate, identify_agent, rate_limit, authorize, exchange, "
    "session, forward"
)


class ManualClock:
    """A monotonic clock that moves only when the test advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def user(sub: str = "alice", iss: str = "https://idp.test") -> Principal:
    return Principal(iss=iss, sub=sub, client_id="client", grant_id="grant")


def buckets(clock: ManualClock, **settings: object) -> AgentBuckets:
    config = msgspec.convert(
        {"per_minute": 60, "burst": 2, **settings}, RateLimitConfig
    )
    return AgentBuckets(config, clock=clock)


def plan(settings: str, pipeline: str = CHAIN) -> None:
    text = CONFIG.format(pipeline=pipeline, settings=settings)
    plan_backend_chains(load_config_text(text, source="test.yaml"))


def test_buckets_burst_then_wait_until_refill() -> None:
    """After the burst a request waits; the wait passes as tokens come back."""
    clock = ManualClock()
    limits = buckets(clock)
    allowed = [limits.acquire(user(), "cursor") for _ in range(2)]
    waiting = limits.acquire(user(), "cursor")
    clock.now += 1.0
    refilled = limits.acquire(user(), "cursor")

    assert allowed == [0.0, 0.0]
    assert waiting == pytest.approx(1.0)
    assert refilled == 0.0


def test_buckets_users_and_agents_independent() -> None:
    """Another user, issuer or agent has a full bucket of its own."""
    clock = ManualClock()
    limits = buckets(clock)
    for _ in range(2):
        limits.acquire(user(), "cursor")

    assert limits.acquire(user(), "cursor") > 0
    assert limits.acquire(user("bob"), "cursor") == 0.0
    assert limits.acquire(user(iss="https://other.test"), "cursor") == 0.0
    assert limits.acquire(user(), "inspector") == 0.0


def test_buckets_agent_override_sets_rate_and_burst() -> None:
    """An agent listed under agents gets its own burst and refill rate."""
    clock = ManualClock()
    limits = buckets(clock, agents={"inspector": {"per_minute": 30, "burst": 1}})

    assert limits.acquire(user(), "inspector") == 0.0
    assert limits.acquire(user(), "inspector") == pytest.approx(2.0)
    assert limits.limit_of("inspector").burst == 1
    assert limits.limit_of("cursor").burst == 2


def test_buckets_least_recently_used_dropped_past_bound() -> None:
    """Past max_tracked_keys the oldest key is dropped and starts full."""
    clock = ManualClock()
    limits = buckets(clock, burst=1, max_tracked_keys=100)
    limits.acquire(user("first"), "cursor")
    assert limits.acquire(user("first"), "cursor") > 0
    for index in range(100):
        limits.acquire(user(f"user-{index}"), "cursor")

    assert limits.acquire(user("first"), "cursor") == 0.0


def test_bucket_key_separators_cannot_collide() -> None:
    """Users whose fields differ only in where a space falls get different keys."""
    assert bucket_key(user("b c", iss="a"), "d") != bucket_key(user("c", "a b"), "d")
    assert bucket_key(user("a"), "b c") != bucket_key(user("a b"), "c")


def test_rate_limit_settings_valid_accepted() -> None:
    """Complete settings pass the chain check."""
    plan(
        "    per_minute: 120\n    burst: 30\n    methods: [tools/call]\n"
        "    agents: {cursor: {per_minute: 10, burst: 5}}"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            "    burst: 3",
            "stages.rate_limit: Object missing required field `per_minute`",
        ),
        ("    per_minute: 0\n    burst: 1", "Expected `int` >= 1"),
        (
            "    per_minute: 1\n    burst: 1\n    agents: {cursor: {per_minute: 1}}",
            "Object missing required field `burst`",
        ),
        (
            "    per_minute: 1\n    burst: 1\n    methods: []",
            "stages.rate_limit: methods is an empty list, so nothing would be limited",
        ),
        (
            "    per_minute: 1\n    burst: 1\n    methods: [notifications/initialized]",
            "stages.rate_limit: methods must not list 'notifications/initialized': "
            "refusing it would leave the session unusable; remove it",
        ),
        (
            "    per_minute: 1\n    burst: 1\n    methods: [tools/call, tools/call]",
            "stages.rate_limit: methods lists 'tools/call' twice; remove one",
        ),
        (
            "    per_minute: 1\n    burst: 1\n    max_tracked_keys: 5",
            "Expected `int` >= 100",
        ),
        (
            "    per_minute: 1\n    burst: 1\n    window: 60",
            "Object contains unknown field `window`",
        ),
    ],
)
def test_rate_limit_invalid_settings_rejected(settings: str, message: str) -> None:
    """Each invalid setting fails the check with a message naming it."""
    with pytest.raises(ConfigError) as raised:
        plan(settings)
    assert any(message in problem for problem in raised.value.problems), (
        raised.value.problems
    )


def test_rate_limit_before_identify_agent_rejected() -> None:
    """The stage needs the agent, so it must come after identify_agent."""
    chain = (
        "audit, authenticate, rate_limit, identify_agent, authorize, exchange, "
        "session, forward"
    )
    with pytest.raises(ConfigError) as raised:
        plan("    per_minute: 1\n    burst: 1", pipeline=chain)
    expected = (
        'pipeline[2]: stage "rate_limit" requires "agent", which no stage before '
        'it provides; put "identify_agent" before it'
    )
    assert expected in raised.value.problems


def test_rate_limit_unknown_agent_name_logged() -> None:
    """An agents key that names no configured agent is logged when built."""
    text = CONFIG.format(pipeline=CHAIN, settings="    per_minute: 1\n    burst: 1")
    gateway_config = load_config_text(text, source="test.yaml")
    settings = msgspec.convert(
        {
            "per_minute": 1,
            "burst": 1,
            "agents": {
                "claud": {"per_minute": 1, "burst": 1},
                "default": {"per_minute": 1, "burst": 1},
            },
        },
        RateLimitConfig,
    )

    class Resources:
        config = gateway_config

    with capture_logs() as logs:
        RateLimitStage(name="rate_limit", config=settings, resources=Resources())
    warnings = [entry for entry in logs if entry["event"] == "stage.unknown_agents"]
    assert len(warnings) == 1
    assert warnings[0]["agents"] == ["claud"]
    assert warnings[0]["log_level"] == "warning"
