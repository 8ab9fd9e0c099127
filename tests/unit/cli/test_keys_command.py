"""``agent-proxy keys list`` and ``keys rotate`` on a real key file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.oauth.keys import SigningKeys

DEMO = Path("config/gateway.yaml").read_text()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The shipped config with var_dir in a temporary directory."""
    assert "var_dir: var\n" in DEMO
    path = tmp_path / "gateway.yaml"
    path.write_text(DEMO.replace("var_dir: var\n", f"var_dir: {tmp_path / 'var'}\n"))
    return path


def key_file(config: Path) -> Path:
    return config.parent / "var" / "keys" / "signing.jwk.json"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_keys_list_without_key_file_fails(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Listing before the gateway created its key file exits 1 with the path."""
    code, out, err = run(["keys", "list", "--config", str(config)], capsys)
    assert code == 1
    assert out == ""
    assert f"no signing key file at {key_file(config)}" in err
    assert not key_file(config).exists()


def test_keys_list_prints_kids_without_key_material(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The list names each key and its times, and prints no private member."""
    keys = SigningKeys.load_or_create(key_file(config))
    private = keys.entries[0].key.as_dict(private=True)["d"]
    code, out, _ = run(["keys", "list", "--config", str(config)], capsys)
    header, row = out.splitlines()
    assert code == 0
    assert header.split() == ["KID", "ALG", "STARTED", "RETIRED", "REMOVAL", "DUE"]
    cells = row.split()
    assert cells[:2] == [keys.kid, "ES256"]
    assert cells[2].endswith("Z")
    assert cells[3:] == ["-", "-"]
    assert private not in out


def test_keys_rotate_retires_current_key(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rotation adds a signing key, keeps the old one, and names both."""
    old = SigningKeys.load_or_create(key_file(config)).kid
    code, out, _ = run(["keys", "rotate", "--config", str(config)], capsys)
    stored = json.loads(key_file(config).read_text())["keys"]
    new = stored[0]["kid"]
    assert code == 0
    assert [member["kid"] for member in stored] == [new, old]
    assert f"{new} (ES256) signs from now on" in out
    assert f"{old} retired, removal due " in out
    code, listed, _ = run(["keys", "list", "--config", str(config)], capsys)
    rows = [line.split() for line in listed.splitlines()[1:]]
    assert [row[0] for row in rows] == [new, old]
    assert rows[0][3:] == ["-", "-"]
    assert rows[1][3] != "-"
    assert rows[1][4] > rows[1][3]


def test_keys_rotate_invalid_key_file_fails(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid key file is reported and left as it is."""
    path = key_file(config)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    code, _, err = run(["keys", "rotate", "--config", str(config)], capsys)
    assert code == 1
    assert "is not valid JSON" in err
    assert path.read_text() == "{not json"


def test_keys_without_action_exits_with_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """'keys' alone is a usage error that lists the actions."""
    with pytest.raises(SystemExit) as info:
        main(["keys"])
    assert info.value.code == 2
    assert "{list,rotate}" in capsys.readouterr().err
