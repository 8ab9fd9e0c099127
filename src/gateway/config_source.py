"""The config file that a reload reads, and the checks its text must pass.

The checks are those of start-up and ``agent-proxy check``: the schema, the
identity checks, every chain and policy, and the settings that only
start-up would otherwise find (the key files of ``private_key_jwt`` clients
and the OAuth rate limiter's trusted proxies).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.chains import plan_backend_chains
from gateway.config import GatewayConfig, load_config_text
from gateway.config.loader import decode_config_text
from gateway.config.yaml_safety import parse_yaml, size_problem
from gateway.errors import ConfigError
from gateway.oauth.pre_registered import read_client_jwks
from gateway.oauth.ratelimit import OAuthRateLimiter
from gateway.redaction import config_secrets, default_redactor

__all__ = ["ConfigSource"]


@dataclass(frozen=True)
class ConfigSource:
    """The config file a reload reads, and how its text becomes a config.

    Attributes:
        path: The file, watched for changes.
        parse: Turns the file's text into a validated config; raises
            :class:`~gateway.errors.ConfigError` with every problem.
        decode: Turns the text into a config without the cross-field checks,
            so that a file those checks reject still has its chains checked
            and reported with them, as ``agent-proxy check`` does; None skips
            that.
    """

    path: Path
    parse: Callable[[str], GatewayConfig]
    decode: Callable[[str], GatewayConfig] | None = None

    @classmethod
    def file(cls, path: Path) -> ConfigSource:
        """Return the source of ``agent-proxy run``: the file, loaded as is."""
        return cls(
            path,
            functools.partial(load_config_text, source=str(path)),
            functools.partial(decode_config_text, source=str(path)),
        )

    def load(self, data: bytes) -> tuple[GatewayConfig, dict[str, Any] | None]:
        """Check the file's bytes and return its config and its raw YAML mapping.

        The secrets the file contains are registered with the log redactor
        first, even when the file is then rejected, so that no error message
        in a log line or event shows them.

        It parses and checks synchronously, so a caller on the event loop
        runs it in a worker thread.

        Raises:
            ConfigError: Listing every problem found.
        """
        problem = size_problem(str(self.path), len(data))
        if problem is not None:
            raise ConfigError([problem])
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            msg = f"{self.path}: the config file is not UTF-8 text (byte {exc.start})"
            raise ConfigError([msg]) from exc
        raw = _raw_mapping(text)
        if raw is not None:
            default_redactor.add_secrets(config_secrets(raw))
        try:
            config = self.parse(text)
        except ConfigError as exc:
            found = [*exc.problems, *self._chain_problems(text)]
            raise ConfigError(list(dict.fromkeys(found))) from exc
        default_redactor.add_secrets(config_secrets(config))
        problems: list[str] = []
        try:
            plan_backend_chains(config)
        except ConfigError as exc:
            problems.extend(exc.problems)
        problems.extend(_start_up_problems(config))
        if problems:
            raise ConfigError(problems)
        return config, raw

    def _chain_problems(self, text: str) -> list[str]:
        """Return the chain problems of a file that failed its other checks."""
        if self.decode is None:
            return []
        try:
            decoded = self.decode(text)
        except ConfigError:
            return []
        try:
            plan_backend_chains(decoded)
        except ConfigError as exc:
            return exc.problems
        return []


def _start_up_problems(config: GatewayConfig) -> list[str]:
    """Return the problems that only start-up would otherwise find.

    A file that a reload accepts must also start a gateway, even where the
    setting itself waits for a restart.
    """
    problems: list[str] = []
    try:
        read_client_jwks(config.oauth.clients)
    except ValueError as exc:
        problems.append(str(exc))
    if config.oauth.rate_limits.enabled:
        try:
            OAuthRateLimiter(config.oauth.rate_limits)
        except ValueError as exc:
            problems.append(f"oauth.rate_limits.trusted_proxies: {exc}")
    return problems


def _raw_mapping(text: str) -> dict[str, Any] | None:
    """Return the file's YAML mapping before interpolation, or None."""
    try:
        raw = parse_yaml(text)
    except (yaml.YAMLError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None
