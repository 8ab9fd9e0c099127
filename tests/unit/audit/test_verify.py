"""``agent-proxy audit verify``: the hash chain of audit files, and its breaks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gateway.audit.chain import record_hash
from gateway.audit.verify import expand, verify_chain

from .support import make_records, run_audit_cli, write_lines


def test_verify_intact_file_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An untouched file passes and the command prints the chain head."""
    records = make_records(20)
    path = tmp_path / "audit.jsonl"
    write_lines(path, records)
    assert run_audit_cli(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "chain intact, 20 records" in out
    assert f"chain head sha256:{record_hash(records[-1])}" in out


def test_verify_tampered_line_reports_next_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A changed value, kept in canonical form, breaks the chain at the next line."""
    records = make_records(10)
    event = json.loads(records[3])
    assert event["outcome"] == "denied"
    event["outcome"] = "success"
    records[3] = json.dumps(
        event, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    path = tmp_path / "audit.jsonl"
    write_lines(path, records)
    assert run_audit_cli(["verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:5: prev_hash does not match" in err
    assert f"the previous record is {path}:4" in err


def test_verify_deleted_line_reports_break(tmp_path: Path) -> None:
    """Removing a line breaks the chain at the line that followed it."""
    records = make_records(10)
    del records[3]
    path = tmp_path / "audit.jsonl"
    write_lines(path, records)
    report = verify_chain([path])
    assert report.problem is not None
    assert report.problem.line == 4
    assert report.records == 3


def test_verify_inserted_line_reports_break(tmp_path: Path) -> None:
    """A forged record inserted with a valid prev_hash breaks at the record after it."""
    records = make_records(6)
    forged = json.loads(records[2])
    forged["prev_hash"] = hashlib.sha256(records[2]).hexdigest()
    forged["id"] = "0" * 32
    forged_line = json.dumps(forged, sort_keys=True, separators=(",", ":")).encode()
    path = tmp_path / "audit.jsonl"
    write_lines(path, [*records[:3], forged_line, *records[3:]])
    report = verify_chain([path])
    assert report.problem is not None
    assert report.problem.line == 5


def test_verify_reformatted_line_reports_it(tmp_path: Path) -> None:
    """A record rewritten with other formatting is reported on its own line."""
    records = make_records(4)
    records[1] = json.dumps(json.loads(records[1]), indent=None).encode()
    path = tmp_path / "audit.jsonl"
    write_lines(path, records)
    report = verify_chain([path])
    assert report.problem is not None
    assert report.problem.line == 2
    assert "canonical form" in report.problem.message


def test_verify_null_prev_hash_mid_stream_reports_break(tmp_path: Path) -> None:
    """A second chain start inside one stream is a break."""
    path = tmp_path / "audit.jsonl"
    write_lines(path, make_records(3) + make_records(2))
    report = verify_chain([path])
    assert report.problem is not None
    assert report.problem.line == 4
    assert "null" in report.problem.message


def test_verify_rotated_set_checked_across_files(tmp_path: Path) -> None:
    """A file with backups is checked oldest first, across the file boundaries."""
    records = make_records(9)
    path = tmp_path / "audit.jsonl"
    write_lines(tmp_path / "audit.jsonl.2", records[:3])
    write_lines(tmp_path / "audit.jsonl.1", records[3:6])
    write_lines(path, records[6:])
    files = expand([path])
    assert files == [tmp_path / "audit.jsonl.2", tmp_path / "audit.jsonl.1", path]
    report = verify_chain(files)
    assert report.problem is None
    assert report.records == 9
    assert report.anchor is None


def test_verify_missing_backup_line_breaks_at_file_start(tmp_path: Path) -> None:
    """A line cut from the end of a backup breaks at the next file's first line."""
    records = make_records(6)
    path = tmp_path / "audit.jsonl"
    write_lines(tmp_path / "audit.jsonl.1", records[:2])
    write_lines(path, records[3:])
    report = verify_chain(expand([path]))
    assert report.problem is not None
    assert report.problem.path == path
    assert report.problem.line == 1


def test_verify_deleted_oldest_backup_reports_anchor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A set whose oldest file was rotated away passes, naming where it starts."""
    records = make_records(6)
    path = tmp_path / "audit.jsonl"
    write_lines(tmp_path / "audit.jsonl.1", records[2:4])
    write_lines(path, records[4:])
    assert run_audit_cli(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"follows sha256:{record_hash(records[1])}" in out


def test_verify_lines_cut_from_unrotated_start_exit_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A never-rotated file that does not start the chain fails unless allowed."""
    records = make_records(6)
    path = tmp_path / "audit.jsonl"
    write_lines(path, records[2:])
    assert run_audit_cli(["verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:1: the first record follows sha256:{record_hash(records[1])}" in err
    assert "--allow-missing-start" in err

    assert run_audit_cli(["verify", "--allow-missing-start", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"follows sha256:{record_hash(records[1])}" in out


def test_verify_edited_last_line_shows_only_in_head(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An edit of the last line passes; the printed head differs from a copy's."""
    records = make_records(4)
    path = tmp_path / "audit.jsonl"
    write_lines(path, records)
    assert run_audit_cli(["verify", str(path)]) == 0
    head = capsys.readouterr().out.splitlines()[-1]
    edited = json.loads(records[-1])
    edited["tool"] = "something_else"
    forged = json.dumps(edited, sort_keys=True, separators=(",", ":")).encode()
    write_lines(path, [*records[:-1], forged])
    assert run_audit_cli(["verify", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] != head


def test_verify_missing_file_exits_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that does not exist is an error of its own, not a break."""
    assert run_audit_cli(["verify", str(tmp_path / "absent.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err
