"""When the signing key rotates and when a retired key leaves the key file.

The rules, applied by :func:`plan_maintenance` to the keys of the file:

- A new key is added, and the signing key retired, on request, when the
  configured algorithm differs from the signing key's, or once the signing
  key is ``rotate_after`` seconds old.
- A retired key stays until every access token it can have signed has
  expired (:attr:`KeySchedule.retention` after it was retired) and is then
  removed. Refresh tokens are random strings kept in the gateway's store,
  not JWTs, so they need no key.
- The file contains at most :data:`MAX_KEYS` keys. A scheduled rotation that
  would exceed it waits until the oldest retired key is removed. A requested
  rotation or an algorithm change goes ahead and removes the oldest retired
  keys early, so the tokens they signed stop verifying.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from gateway.oauth.key_file import KeyEntry, generate_key

if TYPE_CHECKING:
    from gateway.config.model import SigningConfig

log = structlog.get_logger("gateway.oauth.keys")

MAX_KEYS = 10
"""Keys the file may contain: the signing key and up to nine retired ones."""

MAX_VERIFIER_LEEWAY = 300
"""Seconds past ``exp`` that a verifier may still accept an access token: the
largest ``leeway`` the ``authenticate`` stage allows."""

PICKUP_MARGIN = 60
"""Seconds a retired key is kept beyond token lifetime and leeway.

Another process sharing the key file notices a rotation within the 5 seconds
of its file poll and signs with the retired key until then. The rest absorbs
a poll delayed by a busy event loop."""


@dataclass(frozen=True)
class KeySchedule:
    """How often keys rotate and how long retired keys stay.

    Attributes:
        rotate_after: Seconds a key signs before a new one replaces it; 0
            disables scheduled rotation.
        access_token_ttl: Lifetime of the access tokens the keys sign.
    """

    rotate_after: int = 0
    access_token_ttl: int = 600

    @classmethod
    def from_config(cls, signing: SigningConfig) -> KeySchedule:
        """Return the schedule of a ``signing`` config section."""
        return cls(
            rotate_after=signing.rotate_after,
            access_token_ttl=signing.access_token_ttl,
        )

    @property
    def retention(self) -> int:
        """Seconds a retired key stays in the file after it stopped signing."""
        return self.access_token_ttl + MAX_VERIFIER_LEEWAY + PICKUP_MARGIN


@dataclass(frozen=True)
class KeyRotation:
    """A change of the signing key seen by this process.

    Attributes:
        kid: The new signing key.
        previous_kid: The key it replaced.
        algorithm: The new key's algorithm.
        reason: ``schedule``, ``algorithm_changed``, ``manual`` (rotated by
            this process on request) or ``key_file`` (rotated by another
            process sharing the key file).
    """

    kid: str
    previous_kid: str
    algorithm: str
    reason: str


@dataclass(frozen=True)
class MaintenancePlan:
    """The keys after maintenance and what changed.

    Attributes:
        entries: The keys to keep, newest first.
        reason: Why a new key was added (``manual``, ``algorithm_changed`` or
            ``schedule``), or None when none was.
        removed: Each removed key with the cause, ``expired`` or ``key_limit``.
        deferred: A scheduled rotation waits because the file is full.
    """

    entries: list[KeyEntry]
    reason: str | None = None
    removed: list[tuple[KeyEntry, str]] = field(default_factory=list)
    deferred: bool = False

    @property
    def changed(self) -> bool:
        """Whether the key file must be rewritten."""
        return self.reason is not None or bool(self.removed)


def plan_maintenance(
    entries: Sequence[KeyEntry],
    *,
    now: int,
    schedule: KeySchedule,
    algorithm: str | None = None,
    force: bool = False,
) -> MaintenancePlan:
    """Apply the rotation and removal rules to ``entries`` (newest first).

    Args:
        entries: The keys in the file, newest first; at least one.
        now: The current time in seconds since the epoch.
        schedule: The rotation schedule and retention.
        algorithm: The configured algorithm; a signing key of another one
            is replaced. None keeps the signing key's algorithm.
        force: Rotate even when nothing else requires it (a requested rotation).

    Returns:
        The plan; a new key, if any, is generated here.
    """
    newest, *retired = entries
    remaining = [newest]
    removed: list[tuple[KeyEntry, str]] = []
    for entry in retired:
        due = entry.removal_due(schedule.retention)
        if due is not None and due <= now:
            removed.append((entry, "expired"))
        else:
            remaining.append(entry)
    reason = _rotation_reason(newest, now, schedule, algorithm, force)
    deferred = False
    if reason == "schedule" and len(remaining) >= MAX_KEYS:
        reason = None
        deferred = True
    elif reason is not None:
        while len(remaining) >= MAX_KEYS:
            removed.append((remaining.pop(), "key_limit"))
    if reason is None:
        return MaintenancePlan(remaining, removed=removed, deferred=deferred)
    new = KeyEntry(generate_key(algorithm or newest.algorithm), created_at=now)
    old = KeyEntry(
        newest.key,
        newest.created_at,
        retired_at=now,
        remove_after=now + schedule.retention,
    )
    return MaintenancePlan([new, old, *remaining[1:]], reason=reason, removed=removed)


def next_maintenance(
    entries: Sequence[KeyEntry], schedule: KeySchedule, *, deferred: bool = False
) -> float:
    """Return when :func:`plan_maintenance` next has work (``inf`` for never).

    That is the earliest removal of a retired key or the scheduled rotation,
    whichever comes first. After a ``deferred`` rotation, only removals
    count, since the rotation waits for one.
    """
    due = math.inf
    for entry in entries[1:]:
        removal = entry.removal_due(schedule.retention)
        if removal is not None:
            due = min(due, removal)
    if schedule.rotate_after and not deferred:
        due = min(due, entries[0].created_at + schedule.rotate_after)
    return due


def _rotation_reason(
    newest: KeyEntry,
    now: int,
    schedule: KeySchedule,
    algorithm: str | None,
    force: bool,
) -> str | None:
    if force:
        return "manual"
    if algorithm is not None and newest.algorithm != algorithm:
        return "algorithm_changed"
    if schedule.rotate_after and now >= newest.created_at + schedule.rotate_after:
        return "schedule"
    return None


def log_plan(plan: MaintenancePlan, schedule: KeySchedule) -> None:
    """Log what this process changed in the key file; never key material."""
    if plan.reason is not None:
        new, old = plan.entries[0], plan.entries[1]
        log.info(
            "signing_keys.rotated",
            kid=new.kid,
            previous_kid=old.kid,
            algorithm=new.algorithm,
            reason=plan.reason,
        )
        log.info(
            "signing_keys.retired",
            kid=old.kid,
            retired_at=old.retired_at,
            remove_after=old.removal_due(schedule.retention),
        )
    for entry, cause in plan.removed:
        removed = log.warning if cause == "key_limit" else log.info
        removed("signing_keys.removed", kid=entry.kid, reason=cause)
    if plan.deferred:
        log.warning(
            "signing_keys.rotation_deferred",
            kid=plan.entries[0].kid,
            keys=len(plan.entries),
            detail="the key file is full; the rotation waits until the oldest "
            "retired key is removed, or run 'agent-proxy keys rotate'",
        )
