"""The protocol-revision rules behind every case: version header and 2026 headers.

Since 2025-06-18 a client sends ``MCP-Protocol-Version`` on every request
after ``initialize``. A missing header means 2025-03-26, and a value that is
not a served revision gets 400. In 2026-07-28 every POST carries the
version, ``Mcp-Method`` and, for ``tools/call``, ``prompts/get`` and
``resources/read``, ``Mcp-Name``; a header that disagrees with the body gets
400 with JSON-RPC error -32020 (header mismatch).

Covered elsewhere and not repeated here:

- ``test_transport_http.py::test_transport_http_method_accept_and_version_rules``:
  version ``1999`` gets 400.
"""

from __future__ import annotations

from typing import Any

import pytest
from _case_support import (
    HEADER_MISMATCH,
    MODERN_VERSION,
    PROTOCOL_VERSION_KEY,
    answer_of,
    case_stack,
    modern_request,
    open_session,
    tools_call,
)
from mcp_types.jsonrpc import UNSUPPORTED_PROTOCOL_VERSION

pytestmark = pytest.mark.anyio


async def test_missing_version_header_after_initialize_served() -> None:
    """A request without MCP-Protocol-Version is served as 2025-03-26."""
    async with case_stack() as (gateway, client, _controls):
        headers = await open_session(client, gateway.mcp_url, "2025-03-26")
        del headers["mcp-protocol-version"]
        response = await client.post(
            gateway.mcp_url, json=tools_call(1, "echo", text="x"), headers=headers
        )
    assert response.status_code == 200
    assert answer_of(response)["result"]["content"][0]["text"] == "x"


@pytest.mark.parametrize(
    "version",
    ["2024-10-07", "2025-06-19", "latest", "2025-06-18, 2025-03-26", "2099-01-01"],
)
async def test_unsupported_version_header_gets_400(version: str) -> None:
    """A version header naming no served revision gets 400 and an error code.

    The code is -32600 (invalid request) or the -32022 that 2026-07-28
    defines for an unsupported protocol version.
    """
    async with case_stack() as (gateway, client, controls):
        headers = await open_session(client, gateway.mcp_url)
        before = len(controls.requests)
        response = await client.post(
            gateway.mcp_url,
            json=tools_call(2, "echo", text="x"),
            headers={**headers, "mcp-protocol-version": version},
        )
        after = len(controls.requests)
    assert response.status_code == 400
    assert response.json()["error"]["code"] in (-32600, UNSUPPORTED_PROTOCOL_VERSION)
    assert after == before


def mismatched(case: str) -> tuple[dict[str, Any], dict[str, str]]:
    body, headers = modern_request(
        3, "tools/call", {"name": "echo", "arguments": {"text": "x"}}
    )
    if case == "method":
        headers["mcp-method"] = "tools/list"
    elif case == "name":
        headers["mcp-name"] = "fail"
    elif case == "missing-method":
        del headers["mcp-method"]
    elif case == "missing-name":
        del headers["mcp-name"]
    elif case == "version":
        body["params"]["_meta"][PROTOCOL_VERSION_KEY] = "2025-11-25"
    return body, headers


@pytest.mark.parametrize(
    "case", ["method", "name", "missing-method", "missing-name", "version"]
)
async def test_modern_header_mismatch_gets_400_32020(case: str) -> None:
    """A 2026-07-28 header that disagrees with the body gets 400 -32020."""
    body, headers = mismatched(case)
    async with case_stack() as (gateway, client, controls):
        response = await client.post(gateway.mcp_url, json=body, headers=headers)
        calls = controls.posts("tools/call")
    assert response.status_code == 400
    assert response.json()["id"] == 3
    assert response.json()["error"]["code"] == HEADER_MISMATCH
    assert calls == []


async def test_modern_matching_headers_served() -> None:
    """A 2026-07-28 tools/call whose headers match its body is served."""
    body, headers = mismatched("none")
    async with case_stack() as (gateway, client, _controls):
        response = await client.post(gateway.mcp_url, json=body, headers=headers)
    assert response.status_code == 200
    assert answer_of(response)["result"]["content"][0]["text"] == "x"
    assert headers["mcp-protocol-version"] == MODERN_VERSION
