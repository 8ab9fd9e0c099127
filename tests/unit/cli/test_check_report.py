"""What ``agent-proxy check`` prints: chains, stage details, masked settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main

EXAMPLE = "examples.stages.require_tenant_header:RequireTenantHeaderStage"
SCHEMA_FILE = Path("observability/audit-events.schema.json")

CONFIG = """
server: {{public_url: "http://127.0.0.1:8000", var_dir: {var_dir}}}
upstream: {{issuer: "http://127.0.0.1:9000", client_id: gw, client_secret: s}}
backends:
  employees:
    path: /employees/mcp
    url: {employees_url}
    auth: {{kind: static-key, value: k1}}
    pipeline: [audit, authenticate, identify_agent, authorize/strict, exchange,
               session, forward]
  partners:
    path: /partners/mcp
    url: http://127.0.0.1:8002/mcp
    auth: {{kind: static-key, value: k2}}
pipeline: [audit, authenticate, "{example}", identify_agent, authorize, exchange,
           session, forward]
stages:
  audit:
    sinks:
      - kind: webhook
        url: http://127.0.0.1:9/hook
        secret: webhook-secret-in-the-file
        headers: {{Authorization: "Bearer bearer-in-the-file"}}
  authorize/strict: {{require_verified_agent: [employees]}}
  "{example}":
    header: X-Tenant-Id
    allowed: [acme, "${{TENANT_FROM_ENV}}"]
"""


def write(tmp_path: Path, *, employees_url: str = "http://127.0.0.1:8001/mcp") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        CONFIG.format(
            var_dir=tmp_path / "var", employees_url=employees_url, example=EXAMPLE
        )
    )
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(autouse=True)
def tenant_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANT_FROM_ENV", "globex-from-env")


def test_check_notes_default_and_own_chains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each backend's chain is marked as the default one or its own."""
    code, out, _ = run(["check", "--config", str(write(tmp_path))], capsys)
    assert code == 0
    assert "backend employees (backends.employees.pipeline, its own chain):" in out
    assert "backend partners (pipeline, the default chain):" in out


def test_check_shows_instance_type_and_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An instance is shown with its type and instance name and its settings."""
    code, out, _ = run(["check", "--config", str(write(tmp_path))], capsys)
    assert code == 0
    assert "  4. authorize/strict  [type authorize, instance strict]\n" in out
    assert '"require_verified_agent":["employees"]' in out


def test_check_shows_custom_stage_contract(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A custom stage shows its origin, facts, ordering constraints and events."""
    code, out, _ = run(["check", "--config", str(write(tmp_path))], capsys)
    assert code == 0
    assert f"  3. {EXAMPLE}  [import path]\n" in out
    assert (
        "       requires: principal  provides: tenant  before: exchange  after: audit\n"
    ) in out
    assert "       events: TenantRejected\n" in out


def test_check_masks_secret_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Secret-named keys and ``${VAR}`` values are masked; nothing secret is printed."""
    code, out, _ = run(["check", "--config", str(write(tmp_path))], capsys)
    assert code == 0
    assert '"secret":"***"' in out
    assert '"headers":{"Authorization":"***"}' in out
    assert '"allowed":["acme","***"]' in out
    assert "webhook-secret-in-the-file" not in out
    assert "bearer-in-the-file" not in out
    assert "globex-from-env" not in out


def test_check_groups_config_and_chain_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Config errors and chain errors are listed together, in their own groups."""
    path = write(tmp_path, employees_url="ftp://127.0.0.1/mcp")
    text = path.read_text().replace(
        "authorize/strict, exchange,", "exchange, authorize/strict,"
    )
    path.write_text(text.replace("header: X-Tenant-Id", "headr: X-Tenant-Id"))
    code, out, err = run(["check", "--config", str(path)], capsys)
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"{path}: invalid configuration (3 problems):",
        "  config errors:",
        "    backends.employees.url: invalid URL 'ftp://127.0.0.1/mcp'; expected "
        "http(s)://host[:port][/path]",
        f"    stages.{EXAMPLE}: Object contains unknown field `headr`",
        "  chain errors:",
        '    backends.employees.pipeline[3]: stage "exchange" requires "decision", '
        'which no stage before it provides; put "authorize/strict" before it',
        "Okta warnings:",
        "  warning: upstream.client_secret: the secret is written into the config "
        "file; put it in an environment variable and write ${NAME} here",
        "  warning: backends.employees.auth.value: the secret is written into the "
        "config file; put it in an environment variable and write ${NAME} here",
        "  warning: backends.partners.auth.value: the secret is written into the "
        "config file; put it in an environment variable and write ${NAME} here",
    ]


def test_check_audit_schema_adds_custom_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--audit-schema`` adds the events of the config's custom stages."""
    args = ["check", "--config", str(write(tmp_path)), "--audit-schema"]
    code, out, _ = run(args, capsys)
    assert code == 0
    schema = json.loads(out)
    published = json.loads(SCHEMA_FILE.read_text())
    assert "TenantRejected" in schema["discriminator"]["mapping"]
    assert "TenantRejected" not in published["discriminator"]["mapping"]
    tenant = schema["$defs"]["TenantRejected"]
    assert tenant["properties"]["type"] == {"enum": ["TenantRejected"]}
    assert set(tenant["required"]) >= {"id", "time", "header", "detail", "prev_hash"}
    assert set(published["$defs"]) <= set(schema["$defs"])


def test_check_audit_schema_builtin_only_matches_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without custom stages the schema is exactly the published file."""
    args = ["check", "--config", "config/gateway.yaml", "--audit-schema"]
    code, out, _ = run(args, capsys)
    assert code == 0
    assert out == SCHEMA_FILE.read_text()
