"""Characters a client may not put in its registered ``client_name`` or ``scope``.

The consent page shows ``client_name`` to the user, so invisible and
reordering characters could make one client look like another.
"""

from __future__ import annotations

import pytest

from gateway.oauth.clients import RegistrationError, validate_metadata

CALLBACK = "http://127.0.0.1:5555/callback"

REJECTED = {
    "C0 control": "cur\x07sor",
    "DEL": "cursor\x7f",
    "C1 next line": "cursor\x85",
    "C1 control sequence introducer": "cursor\x9b31m",
    "right-to-left override": "\u202erosruc",
    "left-to-right isolate": "cursor\u2066",
    "zero width space": "cur\u200bsor",
    "zero width joiner": "cur\u200dsor",
    "byte order mark": "\ufeffcursor",
    "soft hyphen": "cur\u00adsor",
    "line separator": "cursor\u2028",
    "paragraph separator": "cursor\u2029",
    "tag character": "cursor\U000e0041",
    "private use": "cursor\ue000",
}


@pytest.mark.parametrize("name", REJECTED.values(), ids=REJECTED.keys())
def test_client_name_format_or_control_character_rejected(name: str) -> None:
    """client_name with a control, format or line-separator character is invalid."""
    with pytest.raises(RegistrationError) as info:
        validate_metadata({"redirect_uris": [CALLBACK], "client_name": name})
    assert info.value.error == "invalid_client_metadata"
    assert "client_name" in info.value.description


@pytest.mark.parametrize("scope", ["mcp\u200b", "mcp\x85"])
def test_scope_format_or_control_character_rejected(scope: str) -> None:
    """scope is held to the same rule as client_name."""
    with pytest.raises(RegistrationError) as info:
        validate_metadata({"redirect_uris": [CALLBACK], "scope": scope})
    assert "scope" in info.value.description


@pytest.mark.parametrize(
    "name", ["cursor", "Claude Code", "Überprüfer", "カーソル", "agent-1 (beta)"]
)
def test_client_name_ordinary_text_accepted(name: str) -> None:
    """Letters of any script, digits, spaces and punctuation are accepted."""
    record = validate_metadata({"redirect_uris": [CALLBACK], "client_name": name})
    assert record.client_name == name
