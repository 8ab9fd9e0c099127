"""Demo MCP backends built with the official ``mcp`` SDK.

- ``employees``: protected by access tokens from the dev IdP's ``employees``
  authorization server, so reachable only through the ID-JAG flow;
- ``partners``: protected by a static API key header.
"""

from .employees import create_employees_app
from .partners import create_partners_app

__all__ = ["create_employees_app", "create_partners_app"]
