"""Audit records of event classes that custom stages define."""

from __future__ import annotations

import json

from gateway.audit.chain import HashChain, encode_record, record_hash
from gateway.events import GatewayEvent
from pipeline import Event


class QuotaExceeded(GatewayEvent, frozen=True, kw_only=True):
    """A custom stage's event, unknown to the gateway's own union."""

    limit: int


class BareNoted(Event, frozen=True, kw_only=True):
    """An event that derives from the pipeline base only."""

    note: str


def test_custom_gateway_event_encoded_with_tag() -> None:
    """A custom GatewayEvent subclass is written with its class name as type."""
    event = QuotaExceeded(limit=5, outcome="denied", reason="quota")
    record = json.loads(encode_record(event, "ab" * 32))
    assert record["type"] == "QuotaExceeded"
    assert record["limit"] == 5
    assert record["schema_version"] == 1
    assert record["prev_hash"] == "ab" * 32
    assert record["id"] == event.id


def test_bare_event_gets_prev_hash() -> None:
    """An event without the gateway fields still joins the hash chain."""
    record = json.loads(encode_record(BareNoted(note="hello"), None))
    assert record["type"] == "BareNoted"
    assert record["prev_hash"] is None


def test_custom_events_chain_like_builtin_ones() -> None:
    """Custom events chain to the record before them in a sink's stream."""
    chain = HashChain()
    first = chain(QuotaExceeded(limit=1), None)
    second = chain(BareNoted(note="x"), first)
    assert json.loads(second)["prev_hash"] == record_hash(first)
