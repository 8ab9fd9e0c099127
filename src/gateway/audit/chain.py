"""The hash chain that makes each audit sink's stream tamper-evident.

Every record a durable audit sink journals carries ``prev_hash``: the
SHA-256, in hex, of the previous record's canonical bytes in that sink's
stream, or null for the first record. A record's canonical bytes are its JSON
with keys sorted by code point, no whitespace between tokens and non-ASCII
characters as UTF-8, which is what Python's
``json.dumps(record, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` produces for audit records. Records are written in
exactly that form, so a JSON-lines file can be checked line by line.

A changed, removed or inserted record breaks the chain at the record after
it. The chain cannot show that records were cut from the end of a stream.
To detect that, compare the chain head that ``agent-proxy audit verify``
prints with a copy kept elsewhere (another sink).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from gateway.events import GatewayEvent
from pipeline import Event

_canonical = msgspec.json.Encoder(order="sorted")
_decoder = msgspec.json.Decoder()


def record_hash(record: bytes) -> str:
    """Return the SHA-256 of a record's canonical bytes, as 64 hex digits."""
    return hashlib.sha256(record).hexdigest()


def encode_record(event: Event, prev_hash: str | None) -> bytes:
    """Return the canonical bytes of ``event`` carrying ``prev_hash``."""
    if isinstance(event, GatewayEvent):
        return _canonical.encode(msgspec.structs.replace(event, prev_hash=prev_hash))
    # An event class of a plug-in that does not derive from GatewayEvent has
    # no prev_hash field, so the field is added to its encoded form.
    fields: dict[str, Any] = msgspec.to_builtins(event)
    fields["prev_hash"] = prev_hash
    return _canonical.encode(fields)


def canonical_form(record: bytes) -> bytes:
    """Return the canonical bytes of an encoded JSON record.

    Raises:
        msgspec.DecodeError: ``record`` is not valid JSON.
    """
    return _canonical.encode(_decoder.decode(record))


class HashChain:
    """Encodes the events of one sink's stream as chained records.

    Pass an instance as the ``encode`` of a durable bus subscriber. The
    journal supplies its newest record. When the journal is new, ``seed``
    is used instead: the newest record already at the destination (the last
    line of a JSON-lines file), so the chain goes on after the journal
    directory was removed.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        self.seed = seed

    def __call__(self, event: Event, previous: bytes | None) -> bytes:
        """Return the record of ``event``, chained to ``previous`` (or the seed)."""
        base = previous if previous is not None else self.seed
        return encode_record(event, None if base is None else record_hash(base))
