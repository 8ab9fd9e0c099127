"""Audit sink settings: each invalid setting is reported with its YAML path."""

from __future__ import annotations

import pytest

from gateway.app import audit_config
from gateway.audit.config import (
    JsonlSinkConfig,
    OtlpSinkConfig,
    StdoutSinkConfig,
    WebhookSinkConfig,
)
from gateway.chains import plan_backend_chains
from gateway.config import GatewayConfig, load_config_text
from gateway.demo.runner import demo_config_text
from gateway.errors import ConfigError


def config_with_audit(
    audit_yaml: str, env: dict[str, str] | None = None
) -> GatewayConfig:
    base = demo_config_text()
    start = base.index("stages:\n  audit:")
    text = base[:start] + "stages:\n  audit:\n" + audit_yaml
    return load_config_text(text, env=env or {}, source="gateway.yaml")


def audit_problems(audit_yaml: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        plan_backend_chains(config_with_audit(audit_yaml))
    return caught.value.problems


def test_sink_config_all_kinds_parse() -> None:
    """Each kind maps to its Struct, with the secret taken from the environment."""
    config = config_with_audit(
        """\
    sinks:
      - {kind: jsonl, path: a.jsonl, max_bytes: 1000, backups: 2}
      - {kind: stdout}
      - {kind: otlp, endpoint: "http://127.0.0.1:4318/v1/logs", max_batch: 50}
      - kind: webhook
        url: https://siem.example/audit
        secret: ${AUDIT_WEBHOOK_SECRET}
        max_batch: 20
        max_wait: 0.5
""",
        env={"AUDIT_WEBHOOK_SECRET": "s3cret-s3cret-s3cret"},
    )
    plan_backend_chains(config)
    sinks = audit_config(config).sinks
    assert isinstance(sinks[0], JsonlSinkConfig)
    assert sinks[0].max_bytes == 1000
    assert isinstance(sinks[1], StdoutSinkConfig)
    assert isinstance(sinks[2], OtlpSinkConfig)
    assert isinstance(sinks[3], WebhookSinkConfig)
    assert sinks[3].secret == "s3cret-s3cret-s3cret"


@pytest.mark.parametrize(
    ("audit_yaml", "expected"),
    [
        (
            "    sinks: [{kind: kafka}]\n",
            "stages.audit.sinks[0].kind: Invalid value; expected one of: jsonl, otlp, "
            "stdout, webhook",
        ),
        (
            "    sinks: [{kind: stdout}, {kind: webhook, url: 'https://x.test', "
            "secret: short}]\n",
            "stages.audit.sinks[1].secret: Expected `str` of length >= 16",
        ),
        (
            "    sinks: [{kind: webhook, url: 'ftp://x.test', "
            "secret: 0123456789abcdef}]\n",
            "stages.audit.sinks[0]: url 'ftp://x.test' is not an http or https URL "
            "with a host",
        ),
        (
            "    sinks: [{kind: webhook, secret: 0123456789abcdef}]\n",
            "stages.audit.sinks[0]: Object missing required field `url`",
        ),
        (
            "    sinks: [{kind: otlp, endpoint: collector:4318}]\n",
            "stages.audit.sinks[0]: endpoint 'collector:4318' is not an http or "
            "https URL with a host",
        ),
        (
            "    sinks: [{kind: jsonl, backups: 0}]\n",
            "stages.audit.sinks[0].backups: Expected `int` >= 1",
        ),
        (
            "    sinks: [{kind: webhook, url: 'https://x.test', "
            "secret: 0123456789abcdef, max_batch: 0}]\n",
            "stages.audit.sinks[0].max_batch: Expected `int` >= 1",
        ),
        (
            "    sinks: [{kind: stdout, path: out.jsonl}]\n",
            "stages.audit.sinks[0]: Object contains unknown field `path`",
        ),
        (
            "    sinks: [{kind: jsonl}, {kind: stdout}, {kind: jsonl}]\n",
            "stages.audit: sinks[2].path 'audit.jsonl' is already the path of "
            "sinks[0]; give each jsonl sink its own file",
        ),
        (
            "    journal_max_pending: 0\n",
            "stages.audit.journal_max_pending: Expected `int` >= 1",
        ),
    ],
)
def test_sink_config_invalid_reported_with_path(audit_yaml: str, expected: str) -> None:
    """An invalid sink setting fails the config check with its path."""
    assert audit_problems(audit_yaml) == [expected]


def test_sink_config_unset_secret_variable_reported() -> None:
    """A webhook secret naming an unset variable is a config problem, not a crash."""
    with pytest.raises(ConfigError) as caught:
        config_with_audit(
            "    sinks: [{kind: webhook, url: 'https://x.test', "
            "secret: '${AUDIT_WEBHOOK_SECRET}'}]\n"
        )
    assert any("AUDIT_WEBHOOK_SECRET" in p for p in caught.value.problems)
