"""The observed demo run shared by the end-to-end telemetry tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RUNNER = Path(__file__).with_name("_no_secrets_run.py")


@dataclass(frozen=True)
class ObservedRun:
    """What a demo run in a subprocess left behind.

    Attributes:
        tokens: Every token and secret of the run, by where it was seen.
        logs: The process's stderr and stdout: JSON log lines at DEBUG.
        spans: One JSON object per span: its name and every string it holds.
        audit: The audit file and the journal files, as text.
        audit_events: The audit file's events, decoded.
    """

    tokens: dict[str, list[str]]
    logs: str
    spans: str
    audit: str
    audit_events: list[dict[str, Any]]

    def log_lines(self) -> list[dict[str, Any]]:
        """Return the log lines that are JSON objects."""
        return [
            json.loads(line) for line in self.logs.splitlines() if line.startswith("{")
        ]


@pytest.fixture(scope="session")
def observed_run(tmp_path_factory: pytest.TempPathFactory) -> ObservedRun:
    """Run ``_no_secrets_run.py`` once and read what it wrote."""
    out = tmp_path_factory.mktemp("observed_run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    completed = subprocess.run(
        [sys.executable, str(RUNNER), str(out)],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    files = json.loads((out / "files.json").read_text())
    audit_path = Path(files["audit"])
    journals = [Path(path) for path in files["journals"]]
    audit = audit_path.read_text()
    return ObservedRun(
        tokens=json.loads((out / "tokens.json").read_text()),
        logs=completed.stderr + completed.stdout,
        spans=(out / "spans.jsonl").read_text(),
        audit="\n".join([audit, *(p.read_text(errors="replace") for p in journals)]),
        audit_events=[json.loads(line) for line in audit.splitlines() if line],
    )
