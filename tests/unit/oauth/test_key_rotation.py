"""Signing key rotation on a schedule, retirement, removal and the key file lock.

The keys run on a controllable clock (``Clock``) so that hours pass at once;
every key file is real, on disk, under its real ``flock``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import structlog
from structlog.testing import capture_logs

from gateway.config.model import SigningConfig
from gateway.oauth import key_rotation, key_schedule
from gateway.oauth import keys as keys_module
from gateway.oauth.key_file import TIME_MEMBERS, KeyEntry, generate_key
from gateway.oauth.key_schedule import MAX_KEYS, MAX_VERIFIER_LEEWAY, PICKUP_MARGIN
from gateway.oauth.keys import KeySchedule, SigningKeys, TokenVerificationError
from gateway.stages.authenticate import MAX_LEEWAY

pytestmark = pytest.mark.anyio

HOUR = 3600
START = 1_900_000_000
SCHEDULE = KeySchedule(rotate_after=HOUR, access_token_ttl=600)


class Clock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Capture the key modules' logs, also after a CLI test cached its loggers.

    ``agent-proxy`` configures structlog to cache each logger at first use,
    and a cached logger ignores ``capture_logs``, so the modules get a new one.
    """
    with capture_logs() as logs:
        logger = structlog.get_logger("gateway.oauth.keys")
        monkeypatch.setattr(key_schedule, "log", logger)
        monkeypatch.setattr(keys_module, "log", logger)
        yield logs


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "keys" / "signing.jwk.json"


@pytest.fixture
def clock() -> Clock:
    return Clock()


def load(path: pathlib.Path, clock: Clock, **options: Any) -> SigningKeys:
    return SigningKeys.load_or_create(
        path, schedule=options.pop("schedule", SCHEDULE), clock=clock, **options
    )


def file_kids(path: pathlib.Path) -> list[str]:
    return [member["kid"] for member in json.loads(path.read_text())["keys"]]


def test_schedule_margins_cover_verifier_and_poll() -> None:
    """Retention covers the largest authenticate leeway and the file poll delay."""
    assert MAX_VERIFIER_LEEWAY == MAX_LEEWAY
    assert PICKUP_MARGIN >= 2 * key_rotation.POLL_INTERVAL
    assert SCHEDULE.retention == 600 + MAX_LEEWAY + PICKUP_MARGIN


async def test_check_before_rotate_after_keeps_key(
    path: pathlib.Path, clock: Clock
) -> None:
    """A key younger than rotate_after keeps signing."""
    keys = load(path, clock)
    first = keys.kid
    clock.now += HOUR - 1
    await keys.check()
    assert keys.kid == first
    assert file_kids(path) == [first]


async def test_check_after_rotate_after_rotates(
    path: pathlib.Path, clock: Clock
) -> None:
    """Once rotate_after passes, a new key signs and the old one is retired."""
    keys = load(path, clock)
    old = keys.kid
    old_token = keys.sign({"sub": "alice"})
    clock.now += HOUR
    await keys.check()
    assert keys.kid != old
    assert file_kids(path) == [keys.kid, old]
    assert [key["kid"] for key in keys.jwks()["keys"]] == [keys.kid, old]
    assert keys.verify(old_token, algorithms=["ES256"])[1] == {"sub": "alice"}
    header, _ = keys.verify(keys.sign({"sub": "bob"}), algorithms=["ES256"])
    assert header["kid"] == keys.kid
    retired = keys.entries[1]
    assert retired.retired_at == START + HOUR
    assert retired.removal_due(SCHEDULE.retention) == START + HOUR + SCHEDULE.retention
    (rotation,) = keys.drain_rotations()
    assert (rotation.kid, rotation.previous_kid) == (keys.kid, old)
    assert rotation.reason == "schedule"


async def test_retired_key_removed_after_retention(
    path: pathlib.Path, clock: Clock, key_logs: list[Any]
) -> None:
    """A retired key goes once its tokens expired; its tokens are then rejected."""
    keys = load(path, clock)
    old = keys.kid
    old_token = keys.sign({"sub": "alice"})
    clock.now += HOUR
    await keys.check()
    clock.now += SCHEDULE.retention - 1
    await keys.check()
    assert keys.knows(old)
    key_logs.clear()
    clock.now += 1
    await keys.check()
    assert not keys.knows(old)
    assert file_kids(path) == [keys.kid]
    assert [key["kid"] for key in keys.jwks()["keys"]] == [keys.kid]
    with pytest.raises(TokenVerificationError) as info:
        keys.verify(old_token, algorithms=["ES256"])
    assert info.value.reason == "unknown_key"
    removed = [log for log in key_logs if log["event"] == "signing_keys.removed"]
    assert removed == [
        {
            "event": "signing_keys.removed",
            "kid": old,
            "reason": "expired",
            "log_level": "info",
        }
    ]


async def test_rotation_logs_kids_without_key_material(
    path: pathlib.Path, clock: Clock, key_logs: list[Any]
) -> None:
    """Rotation logs signing_keys.rotated and .retired with kids, never keys."""
    keys = load(path, clock)
    old = keys.kid
    private = keys.entries[0].key.as_dict(private=True)["d"]
    clock.now += HOUR
    await keys.check()
    events = {log["event"]: log for log in key_logs}
    assert events["signing_keys.rotated"]["kid"] == keys.kid
    assert events["signing_keys.rotated"]["previous_kid"] == old
    assert events["signing_keys.retired"]["kid"] == old
    assert private not in repr(key_logs)


def test_restart_keeps_rotation_schedule(path: pathlib.Path, clock: Clock) -> None:
    """Restarts keep the key's start time, so rotation comes at the same moment."""
    first = load(path, clock).kid
    clock.now += HOUR / 2
    again = load(path, clock)
    assert again.kid == first
    assert again.entries[0].created_at == START
    clock.now += HOUR / 2
    rotated = load(path, clock)
    assert rotated.kid != first
    assert file_kids(path) == [rotated.kid, first]
    (rotation,) = rotated.drain_rotations()
    assert rotation.reason == "schedule"


def test_restart_keeps_retirement_times(path: pathlib.Path, clock: Clock) -> None:
    """A restart in the middle of the retention removes the old key on time."""
    first = load(path, clock).kid
    clock.now += HOUR
    second = load(path, clock).kid
    clock.now += SCHEDULE.retention - 1
    assert load(path, clock).knows(first)
    clock.now += 1
    keys = load(path, clock)
    assert not keys.knows(first)
    assert keys.kid == second


def test_rotate_after_zero_never_rotates(path: pathlib.Path, clock: Clock) -> None:
    """With rotate_after 0 the key signs until it is rotated by hand."""
    schedule = KeySchedule(rotate_after=0)
    first = load(path, clock, schedule=schedule).kid
    clock.now += 10 * 365 * 86400
    assert load(path, clock, schedule=schedule).kid == first


def test_key_file_times_never_published(path: pathlib.Path, clock: Clock) -> None:
    """The JWKS has only public members: no d, no times of the key file."""
    keys = load(path, clock)
    keys.rotate()
    stored = json.loads(path.read_text())["keys"]
    assert {"created_at", "retired_at", "remove_after"} <= set(stored[1])
    for published in keys.jwks()["keys"]:
        assert set(published) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
        assert not set(published) & set(TIME_MEMBERS)


def test_rsa_key_published_with_public_members_only(
    path: pathlib.Path, clock: Clock
) -> None:
    """An RS256 key is published with n and e, none of its private primes."""
    keys = load(path, clock, algorithm="RS256")
    (published,) = keys.jwks()["keys"]
    assert set(published) == {"kty", "n", "e", "kid", "alg", "use"}


def test_key_file_without_times_uses_modification_time(
    path: pathlib.Path, clock: Clock
) -> None:
    """A key file from before rotation times dates its keys by its mtime."""
    newest, older = generate_key("ES256"), generate_key("ES256")
    path.parent.mkdir(parents=True)
    document = {"keys": [key.as_dict(private=True) for key in (newest, older)]}
    path.write_text(json.dumps(document))
    written = START - 60
    os.utime(path, (written, written))
    keys = load(path, clock)
    assert keys.kid == newest.kid
    assert keys.entries[0].created_at == written
    assert keys.entries[1].retired_at == written
    clock.now = written + HOUR
    assert load(path, clock).kid != newest.kid


def test_key_file_bad_time_member_rejected(path: pathlib.Path, clock: Clock) -> None:
    """A time member that is not a number of seconds makes the file invalid."""
    load(path, clock)
    document = json.loads(path.read_text())
    document["keys"][0]["created_at"] = "yesterday"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"keys\[0\]\.created_at"):
        load(path, clock)


async def test_scheduled_rotation_deferred_when_key_file_full(
    path: pathlib.Path, clock: Clock, key_logs: list[Any]
) -> None:
    """A full key file defers scheduled rotation until a retired key is removed."""
    schedule = KeySchedule(rotate_after=HOUR, access_token_ttl=4 * HOUR)
    keys = load(path, clock, schedule=schedule)
    for _ in range(MAX_KEYS - 1):
        keys.rotate()
    oldest = keys.entries[-1].kid
    full = file_kids(path)
    clock.now += HOUR
    key_logs.clear()
    await keys.check()
    await keys.check()
    assert file_kids(path) == full
    assert [log["event"] for log in key_logs] == ["signing_keys.rotation_deferred"]
    clock.now = START + schedule.retention
    await keys.check()
    assert not keys.knows(oldest)
    assert len(file_kids(path)) == 2
    assert keys.kid not in full


def test_manual_rotation_when_full_removes_oldest(
    path: pathlib.Path, clock: Clock, key_logs: list[Any]
) -> None:
    """A requested rotation in a full key file removes the oldest retired key."""
    keys = load(path, clock)
    first = keys.kid
    for _ in range(MAX_KEYS - 1):
        keys.rotate()
    key_logs.clear()
    keys.rotate()
    assert len(file_kids(path)) == MAX_KEYS
    assert first not in file_kids(path)
    removed = [log for log in key_logs if log["event"] == "signing_keys.removed"]
    assert len(removed) == 1
    assert removed[0]["kid"] == first
    assert removed[0]["reason"] == "key_limit"
    assert removed[0]["log_level"] == "warning"


async def test_rotation_by_other_process_picked_up(
    path: pathlib.Path, clock: Clock
) -> None:
    """A rewritten key file is loaded at the next check; the newest key signs."""
    gateway = load(path, clock)
    old = gateway.kid
    other = SigningKeys.load(path, schedule=SCHEDULE, clock=clock)
    other.rotate()
    await gateway.check()
    assert gateway.kid == other.kid
    assert gateway.knows(old)
    (rotation,) = gateway.drain_rotations()
    assert rotation.reason == "key_file"
    assert rotation.previous_kid == old


async def test_invalid_key_file_keeps_keys_and_retries_later(
    path: pathlib.Path, clock: Clock, key_logs: list[Any]
) -> None:
    """A key file that turned invalid leaves the keys in use until it is fixed."""
    keys = load(path, clock)
    first = keys.kid
    good = path.read_text()
    path.write_text("{not json")
    clock.now += HOUR
    key_logs.clear()
    await keys.check()
    await keys.check()
    assert keys.kid == first
    events = [log["event"] for log in key_logs]
    assert events == ["signing_keys.reload_failed", "signing_keys.maintenance_failed"]
    path.write_text(good)
    clock.now += 60
    await keys.check()
    assert keys.kid != first


def test_concurrent_scheduled_rotation_adds_one_key(
    path: pathlib.Path, clock: Clock
) -> None:
    """Two processes due at the same moment add one key between them, not two."""
    replicas = [load(path, clock), load(path, clock)]
    first = replicas[0].kid
    clock.now += HOUR
    barrier = threading.Barrier(2)

    def maintain(keys: SigningKeys) -> None:
        barrier.wait()
        keys._maintain_now()

    threads = [threading.Thread(target=maintain, args=(k,)) for k in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    kids = file_kids(path)
    assert len(kids) == 2
    assert kids[1] == first
    assert [keys.kid for keys in replicas] == [kids[0], kids[0]]


def test_concurrent_manual_rotations_lose_no_key(path: pathlib.Path) -> None:
    """Two processes rotating the same file at once keep every key they added."""
    SigningKeys.load_or_create(path)
    script = (
        "import pathlib, sys\n"
        "from gateway.oauth.keys import SigningKeys\n"
        "keys = SigningKeys.load(pathlib.Path(sys.argv[1]))\n"
        "for _ in range(4):\n"
        "    keys.rotate()\n"
        "    print('added', keys.kid)\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    added: list[str] = []
    for process in processes:
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0
        added += [
            line.split()[1] for line in output.splitlines() if line.startswith("added ")
        ]
    kids = file_kids(path)
    assert len(added) == 8
    assert set(added) <= set(kids)
    assert len(kids) == 9


def test_signing_config_rotate_after_bounds() -> None:
    """rotate_after defaults to 30 days, accepts 0, and rejects under an hour."""
    assert SigningConfig().rotate_after == 30 * 86400
    assert msgspec.convert({"rotate_after": 0}, SigningConfig).rotate_after == 0
    with pytest.raises(msgspec.ValidationError, match="at least 3600"):
        msgspec.convert({"rotate_after": 60}, SigningConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"rotate_after": 400 * 86400}, SigningConfig)


def test_keys_without_file_rotate_on_schedule(clock: Clock) -> None:
    """Keys kept only in memory follow the same schedule."""
    entry = KeyEntry(generate_key("ES256"), created_at=START)
    keys = SigningKeys([entry], schedule=SCHEDULE, clock=clock)
    clock.now += HOUR
    keys._maintain_now()
    assert keys.kid != entry.kid
    assert keys.knows(entry.kid)
