"""The signing key file: a JWK Set of private keys with their times, and its lock.

The file is a JWK Set, newest key first. Besides the JWK members, each key
carries when it was created and, once a newer key replaced it, when it was
retired and when it may be removed, as whole seconds since the epoch::

    {"keys": [
      {"kty": "EC", "crv": "P-256", "x": "…", "y": "…", "d": "…",
       "alg": "ES256", "use": "sig", "kid": "…", "created_at": 1767225600},
      {"kty": "EC", …, "created_at": 1764633600,
       "retired_at": 1767225600, "remove_after": 1767226560}
    ]}

These members are private to the file: :func:`public_jwk` builds a published
key from the public members of its type alone. A file written before the
times existed is read with the file's modification time in their place,
which is when its newest key was added.

Every change to the file happens under :func:`key_file_lock`, an exclusive
``flock`` on a lock file next to it, and is written atomically (a temporary
file, fsync, rename), so readers never see a partial file. ``flock`` makes
this POSIX only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

SigningKey = ECKey | RSAKey

FileVersion = tuple[int, int, int, int]
"""Device, inode, modification time (ns) and size of a key file as read.

Each atomic rewrite creates a new file, so the version changes with it unless
the file system reuses the old inode within its timestamp resolution and the
size is equal."""

TIME_MEMBERS = ("created_at", "retired_at", "remove_after")
"""The members of a key entry that are not JWK members."""

_PUBLIC_MEMBERS = {"EC": ("kty", "crv", "x", "y"), "RSA": ("kty", "n", "e")}


@dataclass(frozen=True)
class KeyEntry:
    """One signing key and its times (seconds since the epoch).

    Attributes:
        key: The private key.
        created_at: When the key was generated and started signing.
        retired_at: When a newer key replaced it; None for the newest key.
        remove_after: The removal time set when it was retired, from the
            token lifetime of the process that retired it.
    """

    key: SigningKey
    created_at: int
    retired_at: int | None = None
    remove_after: int | None = None

    @property
    def kid(self) -> str:
        """The key's ``kid``."""
        kid = self.key.kid
        assert kid is not None  # imported and generated keys always have one
        return kid

    @property
    def algorithm(self) -> str:
        """The key's ``alg``."""
        alg = self.key.alg
        assert alg is not None  # imported and generated keys always have one
        return alg

    def removal_due(self, retention: int) -> int | None:
        """Return when a retired key may go, or None for the signing key.

        That is ``retention`` seconds after it was retired, and never before
        the ``remove_after`` recorded at retirement: a process whose access
        tokens now live shorter still keeps the key for the tokens it signed
        with a longer lifetime.
        """
        if self.retired_at is None:
            return None
        return max(self.retired_at + retention, self.remove_after or 0)

    def to_json(self) -> dict[str, Any]:
        """Return the entry as stored in the key file, private key included."""
        document: dict[str, Any] = self.key.as_dict(private=True)
        document["created_at"] = self.created_at
        if self.retired_at is not None:
            document["retired_at"] = self.retired_at
        if self.remove_after is not None:
            document["remove_after"] = self.remove_after
        return document


@dataclass(frozen=True)
class KeyFileSnapshot:
    """The entries of a key file, newest first, and the version they were read at."""

    entries: list[KeyEntry]
    version: FileVersion


def public_jwk(key: SigningKey) -> dict[str, Any]:
    """Return the public JWK of ``key``, with ``kid``, ``alg`` and ``use``.

    Only the public members of the key type are copied, so neither private
    key material nor the file's own members can reach a published key.
    """
    full = key.as_dict(private=False)
    public: dict[str, Any] = {
        name: full[name] for name in _PUBLIC_MEMBERS[key.key_type]
    }
    public.update(kid=key.kid, alg=key.alg, use="sig")
    return public


@contextlib.contextmanager
def key_file_lock(path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive lock for changing the key file at ``path``.

    The lock is a ``flock`` on ``<name>.lock`` next to the key file, created
    with mode 0600 when absent. It excludes other processes and other
    threads of this process, and blocks until it is free.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor releases the lock.
        os.close(fd)


def file_version(path: pathlib.Path) -> FileVersion | None:
    """Return the current version of the key file, or None when it is missing."""
    try:
        return _version(os.stat(path))
    except FileNotFoundError:
        return None


def read_key_file(path: pathlib.Path) -> KeyFileSnapshot:
    """Read a key file.

    Raises:
        OSError: The file cannot be read (``FileNotFoundError`` when absent).
        ValueError: It is not a JWK Set of private ES256 or RS256 keys, or a
            time member is not a whole number of seconds.
    """
    with open(path, "rb") as file:
        version = _version(os.fstat(file.fileno()))
        data = file.read()
    try:
        document = json.loads(data)
    except ValueError as exc:
        msg = f"signing key file {str(path)!r} is not valid JSON: {exc}"
        raise ValueError(msg) from None
    if isinstance(document, dict) and "keys" not in document and "kty" in document:
        document = {"keys": [document]}
    members = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(members, list) or not members:
        msg = (
            f"signing key file {str(path)!r} must be a JWK Set "
            "with a non-empty 'keys' array"
        )
        raise ValueError(msg)
    # A file without times was written when only its newest key was added.
    written_at = version[2] // 1_000_000_000
    entries = []
    for index, member in enumerate(members):
        where = f"{path}: keys[{index}]"
        entries.append(_entry(member, where, newest=index == 0, default=written_at))
    return KeyFileSnapshot(entries=entries, version=version)


def write_key_file(path: pathlib.Path, entries: Sequence[KeyEntry]) -> FileVersion:
    """Replace the key file atomically with mode 0600; return the new version.

    Call it while holding :func:`key_file_lock`, which also keeps two writers
    of this process off the same temporary file.
    """
    data = json.dumps({"keys": [entry.to_json() for entry in entries]}, indent=2)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data.encode())
        os.fsync(fd)
        # A rename keeps the inode, size and modification time.
        version = _version(os.fstat(fd))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return version


def _version(status: os.stat_result) -> FileVersion:
    return (status.st_dev, status.st_ino, status.st_mtime_ns, status.st_size)


def _entry(member: Any, where: str, *, newest: bool, default: int) -> KeyEntry:
    if not isinstance(member, dict):
        msg = f"{where} must be a JWK object"
        raise ValueError(msg)
    times = {
        name: _seconds(member.get(name), f"{where}.{name}") for name in TIME_MEMBERS
    }
    jwk = {name: value for name, value in member.items() if name not in TIME_MEMBERS}
    key = import_private_key(jwk, where)
    created_at = times["created_at"]
    if newest:
        # The first key signs, so a retirement time recorded for it is ignored.
        return KeyEntry(key, created_at if created_at is not None else default)
    retired_at = times["retired_at"]
    return KeyEntry(
        key,
        created_at if created_at is not None else default,
        retired_at if retired_at is not None else default,
        times["remove_after"],
    )


def _seconds(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        msg = f"{where} must be a number of seconds since the epoch, got {value!r}"
        raise ValueError(msg)
    return int(value)


def generate_key(algorithm: str) -> SigningKey:
    """Generate a key for ``algorithm`` with its RFC 7638 thumbprint as ``kid``.

    Raises:
        ValueError: ``algorithm`` is neither ES256 nor RS256.
    """
    parameters: dict[str, Any] = {"alg": algorithm, "use": "sig"}
    if algorithm == "ES256":
        return ECKey.generate_key("P-256", parameters=parameters, auto_kid=True)  # type: ignore[arg-type]
    if algorithm == "RS256":
        return RSAKey.generate_key(2048, parameters=parameters, auto_kid=True)  # type: ignore[arg-type]
    msg = f"cannot generate a key for algorithm {algorithm!r}"
    raise ValueError(msg)


def import_private_key(member: dict[str, Any], where: str) -> SigningKey:
    """Import one private ES256 (EC P-256) or RS256 (RSA) JWK.

    Raises:
        ValueError: Another algorithm or key type, a public key, or an
            invalid JWK; the message starts with ``where``.
    """
    alg = member.get("alg")
    kty = member.get("kty")
    key: SigningKey
    try:
        if alg == "ES256" and kty == "EC" and member.get("crv") == "P-256":
            key = ECKey.import_key(member)
        elif alg == "RS256" and kty == "RSA":
            key = RSAKey.import_key(member)
        else:
            msg = (
                f"{where} has alg {alg!r} and kty {kty!r}; expected ES256 with "
                "an EC P-256 key or RS256 with an RSA key"
            )
            raise ValueError(msg)
    except JoseError as exc:
        msg = f"{where} is not a valid JWK: {exc}"
        raise ValueError(msg) from None
    if not key.is_private:
        msg = f"{where} is a public key; the key file must hold private keys"
        raise ValueError(msg)
    key.ensure_kid()
    return key
