"""The keys that sign the gateway's access tokens: persisted, rotated, retired.

The key file (:mod:`gateway.oauth.key_file`) is a JWK Set of private keys,
newest first. The newest key signs, and every key in the file verifies and
is published in the JWKS, so tokens signed before a rotation stay valid
until their key is removed. When keys rotate and when retired keys are
removed is decided by :mod:`gateway.oauth.key_schedule`.

Several processes may share the key file (replicas, or ``agent-proxy keys
rotate``). Each change is made under an exclusive lock on the file, after
reading it again, so two processes never both rotate at the same moment or
drop each other's keys. A running gateway loads changes made by others when
:meth:`SigningKeys.check` finds the file rewritten (the gateway calls it
every few seconds), and at once when a token names a ``kid`` it lacks: then
:meth:`SigningKeys.reload_for_unknown_kid` reads the file again, at most
once per :data:`RELOAD_INTERVAL` seconds, shared by concurrent callers, and
keeping the loaded keys when the file cannot be read.
"""

from __future__ import annotations

import math
import pathlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import structlog
from joserfc import jwt

from gateway.oauth.jws import (
    SUPPORTED_ALGORITHMS,
    TokenVerificationError,
    verify_compact_jws,
)
from gateway.oauth.key_file import (
    FileVersion,
    KeyEntry,
    KeyFileSnapshot,
    SigningKey,
    file_version,
    generate_key,
    key_file_lock,
    public_jwk,
    read_key_file,
    write_key_file,
)
from gateway.oauth.key_schedule import (
    KeyRotation,
    KeySchedule,
    MaintenancePlan,
    log_plan,
    next_maintenance,
    plan_maintenance,
)

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "KeyEntry",
    "KeyRotation",
    "KeySchedule",
    "SigningKey",
    "SigningKeys",
    "TokenVerificationError",
    "generate_key",
]

log = structlog.get_logger("gateway.oauth.keys")

RELOAD_INTERVAL = 30.0
"""Minimum seconds between two reads of the key file caused by unknown ``kid``s."""

RETRY_INTERVAL = 60
"""Seconds before maintenance runs again after the key file could not be used."""

_read_key_file = read_key_file


class SigningKeys:
    """The gateway's signing keys: the newest signs, all of them verify.

    Create with :meth:`load_or_create` (or :meth:`load` to inspect a file);
    the constructor takes already loaded entries, newest first, and the file
    they belong to, if any. ``clock`` returns the time in seconds since the
    epoch for rotation and removal. It does not apply to token times, which
    the caller checks.
    """

    def __init__(
        self,
        entries: Sequence[KeyEntry],
        *,
        path: pathlib.Path | None = None,
        schedule: KeySchedule | None = None,
        algorithm: str | None = None,
        reload_interval: float = RELOAD_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not entries:
            msg = "SigningKeys needs at least one key"
            raise ValueError(msg)
        for entry in entries:
            if not entry.key.is_private:
                msg = (
                    f"signing key {entry.kid!r} is a public key; "
                    "a private key is needed"
                )
                raise ValueError(msg)
        self.path = path
        self.schedule = schedule or KeySchedule()
        self.clock = clock
        self._algorithm = algorithm
        self._reload_interval = reload_interval
        self._reload_lock = anyio.Lock()
        self._kid_reload_at: float | None = None
        self._generation = 0
        self._seen_version: FileVersion | None = None
        self._retry_at = -math.inf
        self._rotations: deque[KeyRotation] = deque(maxlen=32)
        self._use(entries)

    def _use(self, entries: Sequence[KeyEntry]) -> None:
        self._entries: list[KeyEntry] = list(entries)
        self._by_kid: dict[str, SigningKey] = {e.kid: e.key for e in self._entries}
        self._next_due = next_maintenance(self._entries, self.schedule)

    @classmethod
    def load_or_create(
        cls,
        path: pathlib.Path,
        algorithm: str = "ES256",
        *,
        schedule: KeySchedule | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SigningKeys:
        """Load the key file, creating it with a new key when it does not exist.

        This is the start-up check: under the file lock, a signing key of
        another algorithm than ``algorithm``, or one due for rotation by
        ``schedule``, is replaced by a new key (the old one is retired and
        keeps verifying), and expired retired keys are removed.

        Raises:
            ValueError: ``algorithm`` is not supported or the file is not a
                JWK Set of private ES256/RS256 keys.
            OSError: The file or its directory cannot be read or written.
        """
        _check_algorithm(algorithm)
        schedule = schedule or KeySchedule()
        now = int(clock())
        previous: str | None = None
        with key_file_lock(path):
            if path.exists():
                snapshot = _read_key_file(path)
                previous = snapshot.entries[0].kid
                plan = plan_maintenance(
                    snapshot.entries, now=now, schedule=schedule, algorithm=algorithm
                )
                version = snapshot.version
                if plan.changed:
                    version = write_key_file(path, plan.entries)
            else:
                plan = MaintenancePlan([KeyEntry(generate_key(algorithm), now)])
                version = write_key_file(path, plan.entries)
                log.info(
                    "signing_keys.created", path=str(path), kid=plan.entries[0].kid
                )
        log_plan(plan, schedule)
        instance = cls(
            plan.entries, path=path, schedule=schedule, algorithm=algorithm, clock=clock
        )
        instance._seen_version = version
        if plan.deferred:
            instance._next_due = next_maintenance(plan.entries, schedule, deferred=True)
        if plan.reason is not None and previous is not None:
            instance._record(previous, plan.reason)
        return instance

    @classmethod
    def load(
        cls,
        path: pathlib.Path,
        *,
        schedule: KeySchedule | None = None,
        clock: Callable[[], float] = time.time,
    ) -> SigningKeys:
        """Read an existing key file as it is, changing nothing.

        Raises:
            FileNotFoundError: There is no file at ``path``.
            ValueError: The file is not a JWK Set of private ES256/RS256 keys.
        """
        snapshot = _read_key_file(path)
        instance = cls(snapshot.entries, path=path, schedule=schedule, clock=clock)
        instance._seen_version = snapshot.version
        return instance

    @property
    def kid(self) -> str:
        """The ``kid`` of the key that signs new tokens."""
        return self._entries[0].kid

    @property
    def algorithm(self) -> str:
        """The algorithm of the key that signs new tokens."""
        return self._entries[0].algorithm

    @property
    def entries(self) -> list[KeyEntry]:
        """The loaded keys with their times, newest first."""
        return list(self._entries)

    def knows(self, kid: str) -> bool:
        """Return whether a key with this ``kid`` is loaded."""
        return kid in self._by_kid

    def drain_rotations(self) -> list[KeyRotation]:
        """Return the signing key changes seen since the last call, oldest first."""
        rotations = list(self._rotations)
        self._rotations.clear()
        return rotations

    def rotate(self, algorithm: str | None = None) -> None:
        """Add a new signing key now and retire the current one.

        With a key file, the file is read again and rewritten under its lock,
        so keys another process added are kept. Expired retired keys are
        removed, and when the file is full the oldest retired key goes early
        (see :mod:`gateway.oauth.key_schedule`). This blocks on the lock.

        Raises:
            ValueError: ``algorithm`` is not supported or the file is invalid.
            OSError: The key file cannot be read or written.
        """
        algorithm = algorithm or self._algorithm or self.algorithm
        _check_algorithm(algorithm)
        self._maintain_now(algorithm=algorithm, force=True)

    async def check(self) -> None:
        """Pick up a rewritten key file, then rotate or remove keys when due.

        Run by the gateway every few seconds. Failures to read or write the
        file are logged, leave the loaded keys in use, and are retried after
        :data:`RETRY_INTERVAL` seconds.
        """
        if self.path is not None:
            version = await anyio.to_thread.run_sync(file_version, self.path)
            if version is not None and version != self._seen_version:
                async with self._reload_lock:
                    await self._reload()
        now = self.clock()
        if now < self._next_due or now < self._retry_at:
            return
        async with self._reload_lock:
            previous = self.kid
            try:
                plan, found, version = await anyio.to_thread.run_sync(
                    self._plan, None, False
                )
            except (OSError, ValueError) as exc:
                self._retry_at = now + RETRY_INTERVAL
                log.warning(
                    "signing_keys.maintenance_failed",
                    path=str(self.path),
                    error=str(exc),
                    retry_in=RETRY_INTERVAL,
                )
                return
            self._finish(plan, found, version, previous)

    def _maintain_now(self, algorithm: str | None = None, force: bool = False) -> None:
        previous = self.kid
        plan, found, version = self._plan(algorithm, force)
        self._finish(plan, found, version, previous)

    def _finish(
        self,
        plan: MaintenancePlan,
        found: str,
        version: FileVersion | None,
        previous: str,
    ) -> None:
        """Log a plan this process carried out and use its keys."""
        log_plan(plan, self.schedule)
        reason = plan.reason
        if reason is None and found != previous:
            # Another process rotated the file since this one last read it.
            reason = "key_file"
        self._apply(plan.entries, version, previous, reason)
        if plan.deferred:
            self._next_due = next_maintenance(
                self._entries, self.schedule, deferred=True
            )

    def _plan(
        self, algorithm: str | None, force: bool
    ) -> tuple[MaintenancePlan, str, FileVersion | None]:
        """Plan maintenance and write its result to the key file, if any.

        Safe to run in a worker thread: it reads this object but changes
        only the file.

        Returns:
            The plan, the signing key's kid before the plan, and the version
            of the file as written or read (None without a file).
        """
        now = int(self.clock())
        if self.path is None:
            plan = plan_maintenance(
                self._entries,
                now=now,
                schedule=self.schedule,
                algorithm=algorithm,
                force=force,
            )
            return plan, self.kid, None
        with key_file_lock(self.path):
            snapshot = _read_key_file(self.path)
            plan = plan_maintenance(
                snapshot.entries,
                now=now,
                schedule=self.schedule,
                algorithm=algorithm,
                force=force,
            )
            version = snapshot.version
            if plan.changed:
                version = write_key_file(self.path, plan.entries)
        return plan, snapshot.entries[0].kid, version

    async def reload_for_unknown_kid(self) -> bool:
        """Read the key file again because a token named a ``kid`` not loaded.

        Reads at most once per ``reload_interval`` seconds; concurrent callers
        share one read. A file that is missing or invalid leaves the loaded
        keys in place. Keys without a file are never reloaded.

        Returns:
            Whether the loaded key set changed, here or while this call waited.
        """
        if self.path is None:
            return False
        generation = self._generation
        async with self._reload_lock:
            if self._generation != generation:
                return True
            last = self._kid_reload_at
            if last is not None and time.monotonic() - last < self._reload_interval:
                return False
            self._kid_reload_at = time.monotonic()
            return await self._reload()

    async def _reload(self) -> bool:
        """Load the key file as it is; call with ``_reload_lock`` held."""
        assert self.path is not None
        try:
            snapshot: KeyFileSnapshot = await anyio.to_thread.run_sync(
                _read_key_file, self.path
            )
        except (OSError, ValueError) as exc:
            log.warning(
                "signing_keys.reload_failed",
                path=str(self.path),
                error=str(exc),
                kept=len(self._entries),
            )
            # The poll reads this version again only once it changes, and
            # unknown kids wait the reload interval: the file is broken now.
            self._seen_version = await anyio.to_thread.run_sync(file_version, self.path)
            self._kid_reload_at = time.monotonic()
            return False
        return self._apply(snapshot.entries, snapshot.version, self.kid, "key_file")

    def _apply(
        self,
        entries: list[KeyEntry],
        version: FileVersion | None,
        previous: str,
        reason: str | None,
    ) -> bool:
        """Use ``entries``; return whether the set of kids changed."""
        if version is not None:
            self._seen_version = version
        self._retry_at = -math.inf
        before = [entry.kid for entry in self._entries]
        self._use(entries)
        if [entry.kid for entry in entries] == before:
            return False
        self._generation += 1
        if self.kid != previous:
            if reason == "key_file":
                log.info("signing_keys.reloaded", path=str(self.path), kid=self.kid)
            self._record(previous, reason or "key_file")
        return True

    def _record(self, previous: str, reason: str) -> None:
        self._rotations.append(
            KeyRotation(
                kid=self.kid,
                previous_kid=previous,
                algorithm=self.algorithm,
                reason=reason,
            )
        )

    def sign(self, claims: dict[str, Any], *, typ: str = "at+jwt") -> str:
        """Return a compact JWS of ``claims`` signed by the newest key.

        The header carries ``alg``, ``kid`` and ``typ``.
        """
        key = self._entries[0].key
        header = {"alg": self.algorithm, "kid": self.kid, "typ": typ}
        return jwt.encode(header, claims, key, algorithms=[self.algorithm])

    def jwks(self) -> dict[str, Any]:
        """Return the public JWK Set of every key, newest first."""
        return {"keys": [public_jwk(entry.key) for entry in self._entries]}

    def verify(
        self, token: str, *, algorithms: Sequence[str]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify a compact JWS signed by one of these keys.

        Only the signature is checked, and the caller validates the claims.
        The header must name a ``kid`` of these keys and an ``alg`` that is in
        ``algorithms``. Tokens with ``alg`` ``none`` or an HMAC algorithm, and
        tokens with a ``crit`` or ``b64`` header, are always rejected.

        Returns:
            The protected header and the claims.

        Raises:
            TokenVerificationError: With a ``reason`` saying what failed.
        """
        return verify_compact_jws(token, self._by_kid, algorithms)


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in SUPPORTED_ALGORITHMS:
        msg = (
            f"signing algorithm {algorithm!r} is not supported; "
            f"use one of {sorted(SUPPORTED_ALGORITHMS)}"
        )
        raise ValueError(msg)
