"""Shared pytest configuration: anyio on asyncio for every async test."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio, the backend uvicorn and the MCP SDK use."""
    return "asyncio"
