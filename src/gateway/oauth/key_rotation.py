"""The gateway's background task that keeps its signing keys current."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.abc
import structlog

from gateway.events import SigningKeyRotated

if TYPE_CHECKING:
    from gateway.runtime import Runtime

log = structlog.get_logger("gateway.oauth.keys")

POLL_INTERVAL = 5.0
"""Seconds between two checks of the key file and the rotation schedule."""

_STAGE = "oauth.signing_keys"


async def maintain_signing_keys(
    runtime: Runtime,
    *,
    task_status: anyio.abc.TaskStatus[anyio.CancelScope] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Check the signing keys every :data:`POLL_INTERVAL` seconds, until cancelled.

    Each check loads the key file when another process rewrote it, rotates
    the signing key when ``signing.rotate_after`` has passed, and removes
    retired keys whose tokens have all expired (see
    :meth:`gateway.oauth.keys.SigningKeys.check`). Every change of the
    signing key, including one made at start-up, is published as a
    :class:`~gateway.events.SigningKeyRotated` event.

    Start it with ``task_group.start``, which returns the cancel scope that
    stops it, and stop it before the event bus closes.
    """
    keys = runtime.keys
    with anyio.CancelScope() as scope:
        task_status.started(scope)
        while True:
            try:
                await keys.check()
            except Exception:
                # The task must outlive a failed check: the gateway keeps
                # signing with the loaded keys, and the next check tries again.
                log.exception("signing_keys.check_failed", path=str(keys.path))
            for rotation in keys.drain_rotations():
                await runtime.publish(
                    SigningKeyRotated(
                        stage=_STAGE,
                        reason=rotation.reason,
                        kid=rotation.kid,
                        previous_kid=rotation.previous_kid,
                        algorithm=rotation.algorithm,
                    )
                )
            await anyio.sleep(POLL_INTERVAL)
