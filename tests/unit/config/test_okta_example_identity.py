"""The commented identity settings of the Okta example load once uncommented.

``config/okta.example.yaml`` ships a pre-registered client, an agent's own
Okta app and the matching ``agent_clients`` entry as commented blocks. The
test removes one ``# `` from each line of those blocks, as an operator
would, and loads the result with placeholder environment variables.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.config import load_config_text
from gateway.config.okta_checks import okta_warnings

EXAMPLE = Path("config/okta.example.yaml")
ENV = {
    "OKTA_CLIENT_ID": "0oa-gateway",
    "OKTA_CLIENT_SECRET": "upstream-secret",
    "TICKETS_CLIENT_ID": "0oa-tickets",
    "TICKETS_CLIENT_SECRET": "tickets-secret",
    "WIKI_API_KEY": "wiki-key",
    "CURSOR_DESKTOP_SECRET": "d" * 40,
    "CURSOR_OKTA_CLIENT_ID": "0oa-cursor",
    "CURSOR_OKTA_CLIENT_SECRET": "cursor-secret",
}
BLOCKS = (
    "# oauth:",
    "# match: {client_ids: [cursor-desktop]}",
    "# upstream:",
    "# agent_clients:",
)


def uncomment(text: str, first_lines: tuple[str, ...]) -> str:
    """Uncomment each block that starts at one of ``first_lines``.

    A block runs from its first line to the last commented line after it.
    """
    lines = text.splitlines()
    for first in first_lines:
        start = next(i for i, line in enumerate(lines) if line.strip() == first)
        index = start
        while index < len(lines) and lines[index].lstrip().startswith("#"):
            indent = len(lines[index]) - len(lines[index].lstrip())
            lines[index] = lines[index][:indent] + lines[index].lstrip()[2:]
            index += 1
    text = "\n".join(lines) + "\n"
    return text.replace("    match: {client_name: Cursor}\n", "", 1)


def test_okta_example_identity_blocks_load_without_warnings() -> None:
    """The uncommented blocks make cursor a verified agent with its own app."""
    text = uncomment(EXAMPLE.read_text(), BLOCKS)
    config = load_config_text(text, env=ENV)

    assert okta_warnings(config, yaml.safe_load(text)) == []
    client = config.oauth.clients["cursor-desktop"]
    assert client.client_secret == ENV["CURSOR_DESKTOP_SECRET"]
    cursor = config.agents["cursor"]
    assert cursor.match.client_ids == ["cursor-desktop"]
    assert cursor.upstream is not None
    assert cursor.upstream.client_id == "0oa-cursor"
    auth = config.backends["tickets"].auth
    assert auth.agent_clients["cursor"].client_id == "0oa-cursor"  # type: ignore[union-attr]


def test_okta_example_rotation_and_recheck_set() -> None:
    """The example sets rotate_after and recheck_after to their defaults."""
    config = load_config_text(EXAMPLE.read_text(), env=ENV)

    assert config.signing.rotate_after == 30 * 86400
    assert config.upstream.recheck_after == 300
