"""Mapping RFC 8707 resource values and paths to backends."""

from __future__ import annotations

import msgspec
import pytest

from gateway.config import GatewayConfig
from gateway.oauth.resources import backend_for_path, backend_for_resource

CONFIG = msgspec.convert(
    {
        "server": {"public_url": "http://127.0.0.1:8000"},
        "upstream": {"issuer": "http://127.0.0.1:9000", "client_id": "gw"},
        "backends": {
            "employees": {"path": "/employees/mcp", "url": "http://127.0.0.1:8001/mcp"},
            "partners": {"path": "/partners/mcp", "url": "http://127.0.0.1:8002/mcp"},
        },
    },
    GatewayConfig,
)
EMPLOYEES = "http://127.0.0.1:8000/employees/mcp"


@pytest.mark.parametrize(
    "value",
    [
        EMPLOYEES,
        EMPLOYEES + "/",
        "HTTP://127.0.0.1:8000/employees/mcp",
        "http://127.0.0.1:8000/employees/mcp/",
    ],
)
def test_backend_for_resource_equivalent_spelling_canonical(value: str) -> None:
    """Equivalent spellings map to the canonical resource string."""
    assert backend_for_resource(CONFIG, value) == ("employees", EMPLOYEES)


def test_backend_for_resource_default_port_equivalent() -> None:
    """The scheme's default port is the same resource as no port."""
    config = msgspec.structs.replace(
        CONFIG,
        server=msgspec.structs.replace(CONFIG.server, public_url="https://GW.example"),
    )
    assert backend_for_resource(config, "https://gw.example:443/partners/mcp") == (
        "partners",
        "https://GW.example/partners/mcp",
    )


@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1:8000/employees",
        "http://127.0.0.1:8000/employees/mcp?x=1",
        "http://127.0.0.1:8000/employees/mcp#f",
        "http://127.0.0.1:8000/employees/mcp//",
        "http://127.0.0.1:8001/employees/mcp",
        "https://127.0.0.1:8000/employees/mcp",
        "http://127.0.0.1:8000",
        "employees",
        "",
    ],
)
def test_backend_for_resource_other_value_none(value: str) -> None:
    """Anything that is not a backend's resource maps to no backend."""
    assert backend_for_resource(CONFIG, value) is None


def test_backend_for_path_trailing_slash_accepted() -> None:
    """A backend path matches with or without one trailing slash."""
    assert backend_for_path(CONFIG, "/partners/mcp") == "partners"
    assert backend_for_path(CONFIG, "/partners/mcp/") == "partners"
    assert backend_for_path(CONFIG, "/partners") is None
