"""Loading YAML config: interpolation, error paths, semantic checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import IdJagAuth, StaticKeyAuth, load_config, load_config_text
from gateway.errors import ConfigError

BASE = """
server: {public_url: "http://127.0.0.1:8000"}
upstream: {issuer: "http://127.0.0.1:9000", client_id: gw, client_secret: "${SECRET}"}
backends:
  partners:
    path: /partners/mcp
    url: http://127.0.0.1:8002/mcp
    auth: {kind: static-key, value: "${KEY:-fallback}"}
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, env={"SECRET": "s"} if env is None else env)
    return info.value.problems


def test_config_env_interpolation_with_default() -> None:
    """``${NAME}`` takes the environment; ``${NAME:-x}`` falls back to x."""
    config = load_config_text(BASE, env={"SECRET": "from-env"})
    assert config.upstream.client_secret == "from-env"
    auth = config.backends["partners"].auth
    assert isinstance(auth, StaticKeyAuth)
    assert auth.value == "fallback"


def test_config_missing_env_var_names_path() -> None:
    """An unset variable without default is reported with its YAML path."""
    (problem,) = problems(BASE, env={})
    assert problem.startswith("upstream.client_secret: environment variable SECRET")


def test_config_wrong_type_names_path_not_value() -> None:
    """A type error names the YAML path and the types, never the value."""
    text = BASE.replace(
        'public_url: "http://127.0.0.1:8000"',
        'public_url: "http://127.0.0.1:8000", port: eighty',
    )
    (problem,) = problems(text)
    assert problem == "server.port: Expected `int`, got `str`"


def test_config_unknown_key_rejected() -> None:
    """Unknown keys are errors, so typos do not pass silently."""
    (problem,) = problems(BASE + "pipline: [forward]\n")
    assert "pipline" in problem


def test_config_auth_kinds_decode_to_structs() -> None:
    """``auth.kind`` selects the Struct."""
    text = BASE.replace(
        'auth: {kind: static-key, value: "${KEY:-fallback}"}',
        "auth: {kind: id-jag, issuer: 'http://i/oauth2/e', "
        "token_endpoint: 'http://i/t', resource: 'http://b/mcp', client_id: c}",
    )
    auth = load_config_text(text, env={"SECRET": "s"}).backends["partners"].auth
    assert isinstance(auth, IdJagAuth)
    assert auth.resource == "http://b/mcp"


def test_config_semantic_errors_reported_together() -> None:
    """URL, path and agent reference problems are all listed at once."""
    text = (
        BASE.replace('"http://127.0.0.1:8000"', '"http://127.0.0.1:8000/"').replace(
            "path: /partners/mcp", "path: partners/mcp/"
        )
        + "agents:\n  cursor: {backends: [partners, nowhere]}\n"
    )
    found = problems(text)
    assert any(p.startswith("server.public_url: invalid URL") for p in found)
    assert any(p.startswith("backends.partners.path: invalid path") for p in found)
    assert any(
        p.startswith("agents.cursor.backends[1]: unknown backend 'nowhere'")
        for p in found
    )


def test_config_invalid_yaml_reported() -> None:
    """Broken YAML is a ConfigError, not a crash."""
    (problem,) = problems("server: [unclosed")
    assert "invalid YAML" in problem


def test_config_missing_file_reported(tmp_path: Path) -> None:
    """A missing file is reported with its path."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read config file" in info.value.problems[0]


def test_config_demo_file_valid() -> None:
    """The shipped demo config loads."""
    config = load_config(Path("config/gateway.yaml"), env={})
    assert config.server.public_url == "http://127.0.0.1:8000"
    assert set(config.backends) == {"employees", "partners"}


def test_config_env_var_fills_number_field() -> None:
    """``${PORT}`` fills an int field once converted."""
    text = BASE.replace(
        'public_url: "http://127.0.0.1:8000"',
        'public_url: "http://127.0.0.1:8000", port: "${PORT}"',
    )
    config = load_config_text(text, env={"SECRET": "s", "PORT": "8123"})
    assert config.server.port == 8123


def test_config_without_backends_rejected() -> None:
    """A gateway with nothing behind it is a config error."""
    text = BASE.split("backends:")[0] + "backends: {}\n"
    assert "backends: no backend is configured; add at least one" in problems(text)


def test_config_out_of_range_values_rejected() -> None:
    """Ports, limits and lifetimes outside their range are reported."""
    for bad, expected in [
        ("port: 99999", "server.port: Expected `int` <= 65535"),
        ("port: 0", "server.port: Expected `int` >= 1"),
        ("max_body_bytes: 0", "server.max_body_bytes: Expected `int` >= 1024"),
    ]:
        text = BASE.replace(
            'public_url: "http://127.0.0.1:8000"',
            f'public_url: "http://127.0.0.1:8000", {bad}',
        )
        (problem,) = problems(text)
        assert problem.startswith(expected), problem


def test_config_backend_error_names_backend_key() -> None:
    """An error inside one backend names that backend, not ``[...]``."""
    text = BASE.replace("kind: static-key", "kind: bogus")
    (problem,) = problems(text)
    assert problem == (
        "backends.partners.auth.kind: Invalid value; "
        "expected one of: basic, id-jag, none, static-key"
    )


def test_config_unknown_top_level_key_says_where() -> None:
    """An unknown top-level key is reported at the top level."""
    (problem,) = problems(BASE + "bogus: 1\n")
    assert problem == "top level: Object contains unknown field `bogus`"


def test_config_invalid_origin_rejected() -> None:
    """Allowed origins must be exact scheme://host[:port] values."""
    text = BASE.replace(
        'public_url: "http://127.0.0.1:8000"',
        'public_url: "http://127.0.0.1:8000", allowed_origins: ["*", "http://x/a"]',
    )
    found = problems(text)
    assert found[0].startswith("server.allowed_origins[0]: invalid origin '*'")
    assert found[1].startswith("server.allowed_origins[1]: invalid origin")


def test_config_recursive_alias_rejected() -> None:
    """A self-referencing YAML alias is an error, not a crash."""
    (problem,) = problems("a: &a [*a]\n" + BASE)
    assert "the alias *a refers to a node that contains it" in problem


def test_config_non_utf8_file_rejected(tmp_path: Path) -> None:
    """A file that is not UTF-8 is reported with the byte offset."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(BASE.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "is not UTF-8 text" in info.value.problems[0]
