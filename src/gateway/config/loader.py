"""Loading YAML into :class:`GatewayConfig`, with ``${ENV_VAR}`` interpolation."""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import msgspec
import yaml

from gateway.config.identity_checks import identity_problems
from gateway.config.model import (
    AgentConfig,
    BackendConfig,
    GatewayConfig,
    OAuthClientConfig,
)
from gateway.config.yaml_safety import parse_yaml, size_problem
from gateway.errors import ConfigError
from pipeline.settings import value_free

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

__all__ = ["ConfigError", "decode_config_text", "load_config", "load_config_text"]


def load_config(
    path: str | Path, env: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read and validate a config file.

    Raises:
        ConfigError: The file is missing, not YAML, or invalid; every problem
            is listed with its YAML path.
    """
    file = Path(path)
    try:
        problem = size_problem(str(file), file.stat().st_size)
        if problem is not None:
            raise ConfigError([problem])
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read config file: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        msg = f"{file}: the config file is not UTF-8 text (byte {exc.start})"
        raise ConfigError([msg]) from exc
    return load_config_text(text, env=env, source=str(file))


def load_config_text(
    text: str, *, env: Mapping[str, str] | None = None, source: str = "<config>"
) -> GatewayConfig:
    """Parse YAML text into a validated config (see :func:`load_config`)."""
    config = decode_config_text(text, env=env, source=source)
    problems = _check_semantics(config)
    if problems:
        raise ConfigError(problems)
    return config


def decode_config_text(
    text: str, *, env: Mapping[str, str] | None = None, source: str = "<config>"
) -> GatewayConfig:
    """Parse YAML text into a config without the cross-field checks.

    ``agent-proxy check`` uses it to validate the chains of a config whose
    URLs, names or references are wrong, so that it lists those problems
    and the chain problems together.

    Raises:
        ConfigError: The text is not YAML, a ``${VAR}`` is not set, or a
            value has the wrong type or an unknown key.
    """
    problem = size_problem(source, len(text.encode("utf-8", "surrogatepass")))
    if problem is not None:
        raise ConfigError([problem])
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as exc:
        detail = str(exc).replace('"<unicode string>"', source)
        raise ConfigError([f"{source}: invalid YAML: {detail}"]) from exc
    except RecursionError as exc:
        msg = f"{source}: invalid YAML: nesting too deep (a recursive alias?)"
        raise ConfigError([msg]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    problems: list[str] = []
    try:
        raw = _interpolate(raw, os.environ if env is None else env, "", problems)
    except RecursionError as exc:
        msg = f"{source}: invalid YAML: nesting too deep (a recursive alias?)"
        raise ConfigError([msg]) from exc
    if problems:
        raise ConfigError(problems)
    try:
        # strict=False lets "${PORT}" (a string after interpolation) fill an int.
        config = msgspec.convert(raw, GatewayConfig, str_keys=True, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError([_locate(exc, raw)]) from exc
    return config


def _interpolate(
    value: Any, env: Mapping[str, str], path: str, problems: list[str]
) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(
                f"{path or '<root>'}: environment variable {name} is not set; "
                f"set it or write ${{{name}:-default}}"
            )
            return ""

        return _ENV_REF.sub(replace, value)
    if isinstance(value, dict):
        return {
            k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)
        ]
    return value


_ENTRY_TYPES: dict[str, Any] = {
    "backends": BackendConfig,
    "agents": AgentConfig,
    "oauth.clients": OAuthClientConfig,
}


def _locate(exc: msgspec.ValidationError, raw: Any) -> str:
    """Describe a validation error with its full YAML path.

    msgspec writes ``[...]`` for a mapping key, so for the named sections the
    entries are validated one by one to find which key contains the bad value.
    """
    text = str(exc)
    for section, entry_type in _ENTRY_TYPES.items():
        entries = _lookup(raw, section)
        if f"$.{section}[...]" not in text or not isinstance(entries, dict):
            continue
        for key, entry in entries.items():
            try:
                msgspec.convert(entry, entry_type, str_keys=True, strict=False)
            except msgspec.ValidationError as inner:
                return _with_path(inner, entry, prefix=f"{section}.{key}")
    return _with_path(exc, raw)


def _with_path(exc: msgspec.ValidationError, raw: Any, prefix: str = "") -> str:
    """Return the message of ``exc`` at its full YAML path, without any value.

    The value at fault is never shown, because it may be a secret written
    with the wrong type. Where the field takes one of a few values, the
    message lists those instead.
    """
    text = str(exc)
    head, sep, where = text.rpartition(" - at `$")
    if not sep:
        return f"{prefix or 'top level'}: {value_free(text)}"
    relative = where.rstrip("`").lstrip(".")
    if prefix:
        relative = f"{prefix}.{relative}" if relative else prefix
    head = value_free(head)
    shown = ""
    if head == "Invalid value":
        choices = _choices(relative)
        if relative.endswith("auth.kind"):
            choices = ["basic", "id-jag", "none", "static-key"]
        if choices:
            shown = f"; expected one of: {', '.join(choices)}"
    return f"{relative or '<root>'}: {head}{shown}"


def _choices(path: str) -> list[str]:
    """Return the values a ``Literal`` field at ``path`` accepts, or none."""
    current: Any = GatewayConfig
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        current = _strip_optional(current)
        origin = get_origin(current)
        if part.startswith("["):
            args = get_args(current) if origin in (list, tuple) else ()
            current = args[0] if args else None
        elif origin is dict:
            current = get_args(current)[1]
        elif isinstance(current, type) and issubclass(current, msgspec.Struct):
            fields = dict(
                zip(
                    current.__struct_encode_fields__,
                    current.__struct_fields__,
                    strict=True,
                )
            )
            name = fields.get(part)
            current = get_type_hints(current).get(name) if name else None
        else:
            current = None
        if current is None:
            return []
    current = _strip_optional(current)
    if get_origin(current) is Literal:
        return [str(arg) for arg in get_args(current)]
    return []


def _strip_optional(expected: Any) -> Any:
    while get_origin(expected) is Annotated:
        expected = get_args(expected)[0]
    if get_origin(expected) in (Union, types.UnionType):
        arms = [arm for arm in get_args(expected) if arm is not type(None)]
        if len(arms) == 1:
            return _strip_optional(arms[0])
    return expected


_MISSING = object()


def _lookup(raw: Any, path: str) -> Any:
    current = raw
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(current, list) or index >= len(current):
                return _MISSING
            current = current[index]
        else:
            if not isinstance(current, dict) or part not in current:
                return _MISSING
            current = current[part]
    return current


def _check_semantics(config: GatewayConfig) -> list[str]:
    problems: list[str] = []
    problems.extend(_check_url("server.public_url", config.server.public_url))
    problems.extend(_check_canonical("server.public_url", config.server.public_url))
    problems.extend(_check_url("upstream.issuer", config.upstream.issuer))
    for index, origin in enumerate(config.server.allowed_origins):
        problems.extend(_check_origin(f"server.allowed_origins[{index}]", origin))
    if not config.backends:
        problems.append("backends: no backend is configured; add at least one")
    paths: dict[str, str] = {}
    for name, backend in config.backends.items():
        where = f"backends.{name}"
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            problems.append(
                f"{where}: invalid backend name {name!r}; use lowercase letters, "
                "digits, '-' and '_'"
            )
        if not backend.path.startswith("/") or backend.path.endswith("/"):
            problems.append(
                f"{where}.path: invalid path {backend.path!r}; it must start with '/' "
                "and not end with '/'"
            )
        if backend.path in paths:
            problems.append(
                f"{where}.path: {backend.path!r} is already used by backend "
                f"{paths[backend.path]!r}"
            )
        paths[backend.path] = name
        if backend.path.startswith(("/oauth2", "/.well-known")):
            problems.append(
                f"{where}.path: {backend.path!r} collides with the OAuth endpoints"
            )
        problems.extend(_check_url(f"{where}.url", backend.url))
    known = ", ".join(sorted(config.backends))
    for agent_name, agent in config.agents.items():
        for i, backend_name in enumerate(agent.backends):
            if backend_name != "*" and backend_name not in config.backends:
                problems.append(
                    f"agents.{agent_name}.backends[{i}]: unknown backend "
                    f"{backend_name!r}; known backends: {known}"
                )
        for backend_name in agent.tools:
            if backend_name not in config.backends:
                problems.append(
                    f"agents.{agent_name}.tools.{backend_name}: unknown backend "
                    f"{backend_name!r}; known backends: {known}"
                )
    problems.extend(identity_problems(config))
    return problems


def _check_origin(path: str, origin: str) -> list[str]:
    parts = urlsplit(origin)
    valid = (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "*" not in origin
        and not (parts.path or parts.query or parts.fragment)
    )
    if valid:
        return []
    return [
        f"{path}: invalid origin {origin!r}; write scheme://host[:port] exactly "
        "as the browser sends it (no path, no wildcard)"
    ]


def _check_canonical(path: str, url: str) -> list[str]:
    # Resources are public_url plus a path, compared byte for byte by clients
    # (RFC 9728 section 3.3), so the URL must already be in canonical form.
    parts = urlsplit(url)
    if not parts.hostname:
        return []
    default_port = {"http": 80, "https": 443}.get(parts.scheme.lower())
    try:
        port = parts.port
    except ValueError:
        return []
    # urlsplit lower-cases the scheme, so the raw text is checked.
    scheme = url.split(":", 1)[0]
    upper_case = any(character.isupper() for character in scheme + parts.netloc)
    if upper_case or (port is not None and port == default_port):
        return [
            f"{path}: {url!r} is not in canonical form; write the scheme and host "
            "in lower case and leave out the default port"
        ]
    return []


def _check_url(path: str, url: str) -> list[str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"{path}: invalid URL {url!r}; expected http(s)://host[:port][/path]"]
    if url.endswith("/") or parts.query or parts.fragment:
        return [
            f"{path}: invalid URL {url!r}; remove the trailing '/', query or fragment"
        ]
    return []
