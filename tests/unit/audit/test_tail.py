"""``agent-proxy audit tail``: filters, the last events, following across rotation."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from gateway.audit.cli import tail_command
from gateway.audit.tail import EventFilter, follow_lines, last_lines
from gateway.demo.runner import demo_config_text

from .support import make_records, run_audit_cli, write_lines


def printed_events(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_tail_filters_combine_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Filters of different fields must all match; repeated values are alternatives."""
    path = tmp_path / "audit.jsonl"
    records = make_records(24)
    write_lines(path, records)
    argv = ["tail", "--file", str(path), "-n", "100"]
    assert run_audit_cli([*argv, "--user", "alice", "--outcome", "denied"]) == 0
    events = printed_events(capsys)
    assert len(events) == 12
    for event in events:
        assert event["user"] == {"iss": "https://idp.test", "sub": "alice"}
        assert event["outcome"] == "denied"

    assert (
        run_audit_cli([*argv, "--agent", "claude-code", "--type", "AccessGranted"]) == 0
    )
    events = printed_events(capsys)
    assert [e["tool"] for e in events] == ["tool_0", "tool_6", "tool_12", "tool_18"]

    assert run_audit_cli([*argv, "--backend", "partners", "--backend", "nowhere"]) == 0
    events = printed_events(capsys)
    assert [e["tool"] for e in events] == [f"tool_{n}" for n in range(0, 24, 4)]


def test_tail_prints_lines_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """JSON output is the records' own bytes, so a printed line still verifies."""
    path = tmp_path / "audit.jsonl"
    records = make_records(5)
    write_lines(path, records)
    assert run_audit_cli(["tail", "--file", str(path), "-n", "2"]) == 0
    out = capsys.readouterr().out.encode()
    assert out == records[3] + b"\n" + records[4] + b"\n"


def test_tail_text_format_is_compact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text format gives one line per event with the fields people filter on."""
    path = tmp_path / "audit.jsonl"
    write_lines(path, make_records(2))
    assert run_audit_cli(["tail", "--file", str(path), "--format", "text"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert " AccessDenied " in lines[1]
    assert " denied " in lines[1]
    assert "user=alice agent=cursor backend=employees" in lines[1]
    assert "tool=tool_1 reason=tool_denied" in lines[1]


def test_tail_last_lines_reach_into_backups(tmp_path: Path) -> None:
    """The last N matches reach into backups; a line being written is left out."""
    records = make_records(12)
    path = tmp_path / "audit.jsonl"
    write_lines(tmp_path / "audit.jsonl.2", records[:4])
    write_lines(tmp_path / "audit.jsonl.1", records[4:8])
    write_lines(path, records[8:])
    with path.open("ab") as fh:
        fh.write(records[0][:10])
    lines, end = last_lines(path, 7, EventFilter())
    assert lines == records[5:]
    assert end == path.stat().st_size - 10

    denied, _ = last_lines(path, 100, EventFilter(outcomes=frozenset({"denied"})))
    assert denied == records[1::2]


def test_tail_follow_continues_across_rotation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Following reads the rest of a rotated file, then the new file from its start."""
    records = make_records(9)
    path = tmp_path / "audit.jsonl"
    write_lines(path, records[:3])
    stop = threading.Event()
    follower = threading.Thread(
        target=tail_command,
        args=(path, EventFilter()),
        kwargs={"lines": 1, "follow": True, "fmt": "json", "stop": stop},
    )
    printed: list[bytes] = []

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 5
        while len(printed) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            printed.extend(
                line.encode() for line in capsys.readouterr().out.splitlines()
            )

    follower.start()
    try:
        wait_for(1)
        with path.open("ab") as fh:
            # A line written in two parts is printed once, whole.
            fh.write(records[3] + b"\n" + records[4][:20])
            fh.flush()
            wait_for(2)
            fh.write(records[4][20:] + b"\n")
        os.replace(path, tmp_path / "audit.jsonl.1")
        write_lines(path, records[5:7])
        wait_for(5)
        with path.open("ab") as fh:
            fh.write(records[7] + b"\n" + records[8] + b"\n")
        wait_for(7)
    finally:
        stop.set()
        follower.join(5)
    assert not follower.is_alive()
    assert printed == records[2:]


def test_follow_lines_rereads_truncated_file(tmp_path: Path) -> None:
    """A file truncated below the read position is read again from its start."""
    records = make_records(4)
    path = tmp_path / "audit.jsonl"
    write_lines(path, records[:2])
    stop = threading.Event()
    seen: list[bytes] = []

    def collect() -> None:
        seen.extend(
            follow_lines(path, path.stat().st_size, stop=stop, poll_interval=0.05)
        )

    follower = threading.Thread(target=collect)
    follower.start()
    try:
        time.sleep(0.2)
        write_lines(path, records[2:3])
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        follower.join(5)
    assert seen == [records[2]]


def test_tail_default_file_comes_from_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --file, tail reads the first jsonl sink's file of --config."""
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    records = make_records(3)
    write_lines(var_dir / "audit.jsonl", records)
    config = tmp_path / "gateway.yaml"
    config.write_text(demo_config_text().replace("var_dir: var", f"var_dir: {var_dir}"))
    assert run_audit_cli(["tail", "--config", str(config)]) == 0
    assert capsys.readouterr().out.encode() == b"".join(r + b"\n" for r in records)

    config.write_text("server: {}\n")
    assert run_audit_cli(["tail", "--config", str(config)]) == 1
    assert "pass --file" in capsys.readouterr().err


def test_tail_text_format_escapes_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Control, bidi and separator characters in any value print as escapes."""
    path = tmp_path / "audit.jsonl"
    hostile = {
        "time": "2026-01-01T00:00:00Z\r",
        "type": "AccessDenied\x1b[2J",
        "outcome": "denied\x07",
        "method": "tools/call\x1b]0;owned\x07\rFORGED",
        "tool": "a\u202eb\u200bc\u2028d\x7f\x85\\x1b",
        "user": {"sub": "eve agent=admin"},
        "backend": 'x"y',
    }
    path.write_text(json.dumps(hostile) + "\n")
    assert run_audit_cli(["tail", "--file", str(path), "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    line = out.rstrip("\n")
    assert line.isprintable()
    assert "\\r" not in line  # a CR is escaped as a character code, not \r
    assert "2026-01-01T00:00:00Z\\x0d" in line
    assert "AccessDenied\\x1b[2J" in line
    assert "denied\\x07" in line
    assert "method=tools/call\\x1b]0;owned\\x07\\x0dFORGED" in line
    assert "tool=a\\u202eb\\u200bc\\u2028d\\x7f\\x85\\\\x1b" in line
    assert 'user="eve agent=admin"' in line
    assert 'backend="x\\"y"' in line


def test_follow_lines_two_rotations_between_polls_skip_nothing(
    tmp_path: Path,
) -> None:
    """Two rotations between reads: the file renamed twice is read before the new."""
    records = make_records(7)
    path = tmp_path / "audit.jsonl"
    write_lines(path, records[:2])
    stop = threading.Event()
    guard = threading.Timer(5, stop.set)
    guard.start()
    try:
        lines = follow_lines(path, 0, stop=stop, poll_interval=0.01)
        printed = [next(lines), next(lines)]
        with path.open("ab") as fh:
            fh.write(records[2] + b"\n")
        os.replace(path, tmp_path / "audit.jsonl.1")
        write_lines(path, records[3:5])
        os.replace(tmp_path / "audit.jsonl.1", tmp_path / "audit.jsonl.2")
        os.replace(path, tmp_path / "audit.jsonl.1")
        write_lines(path, records[5:])
        printed.extend(next(lines) for _ in range(5))
    finally:
        stop.set()
        guard.cancel()
    assert printed == records
