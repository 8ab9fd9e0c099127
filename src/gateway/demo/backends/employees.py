"""The ``employees`` demo MCP server, protected by access tokens from its own AS.

Only access tokens issued by the dev IdP's ``employees`` authorization server
(through the ID-JAG flow) are accepted, so clients can reach it only through
the gateway. Tool results name the calling user, taken from the token.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel
from starlette.applications import Starlette

from gateway.asgi_tracing import ServerSpanMiddleware

from .common import caller_of, send_log, transport_security
from .jwt_verifier import JwtAccessTokenVerifier

__all__ = ["READ_SCOPE", "WRITE_SCOPE", "create_employees_app"]

READ_SCOPE = "employees:read"
WRITE_SCOPE = "employees:write"
_MAX_SALARY = 1_000_000
_MAX_REPORT_STEPS = 20
_REPORT_STEP_DELAY = 0.05


class Employee(BaseModel):
    """One entry of the employee directory."""

    employee_id: str
    name: str
    title: str
    department: str
    email: str
    location: str
    salary: int


def _directory() -> dict[str, Employee]:
    rows = [
        ("E1001", "Dana Whitfield", "Staff Engineer", "Engineering", "Berlin", 142000),
        ("E1002", "Marcus Oyelaran", "Product Manager", "Product", "London", 128000),
        ("E1003", "Priya Raman", "Security Analyst", "Security", "Austin", 118000),
        ("E1004", "Tomás Ferreira", "Account Executive", "Sales", "Lisbon", 97000),
        ("E1005", "Hannah Kowalski", "HR Partner", "People", "Toronto", 105000),
    ]
    return {
        employee_id: Employee(
            employee_id=employee_id,
            name=name,
            title=title,
            department=department,
            email=f"{name.split()[0].lower()}@example.com",
            location=location,
            salary=salary,
        )
        for employee_id, name, title, department, location, salary in rows
    }


def _require_scope(ctx: Context[Any, Any], scope: str) -> dict[str, Any]:
    caller = caller_of(ctx)
    if scope not in caller.get("scopes", ()):
        msg = f"this tool needs the scope {scope!r}, which the access token lacks"
        raise ToolError(msg)
    return caller


def _lookup(directory: dict[str, Employee], employee_id: str) -> Employee:
    employee = directory.get(employee_id)
    if employee is None:
        msg = f"no employee has the id {employee_id!r}"
        raise ToolError(msg)
    return employee


def _build_server(verifier: JwtAccessTokenVerifier, auth: AuthSettings) -> MCPServer:
    server: MCPServer = MCPServer(
        "employees",
        instructions="Look up and update the demo employee directory.",
        token_verifier=verifier,
        auth=auth,
        log_level="WARNING",
    )
    directory = _directory()

    @server.tool()
    def list_employees(
        ctx: Context[Any, Any], department: str | None = None
    ) -> dict[str, Any]:
        """List employees, optionally only those of one department."""
        caller = _require_scope(ctx, READ_SCOPE)
        employees = [
            {key: value for key, value in row.model_dump().items() if key != "salary"}
            for row in directory.values()
            if department is None or row.department.lower() == department.lower()
        ]
        return {"requested_by": caller, "employees": employees}

    @server.tool()
    def get_employee(ctx: Context[Any, Any], employee_id: str) -> dict[str, Any]:
        """Return one employee's record, salary included."""
        caller = _require_scope(ctx, READ_SCOPE)
        employee = _lookup(directory, employee_id)
        return {"requested_by": caller, "employee": employee.model_dump()}

    @server.tool()
    def update_salary(
        ctx: Context[Any, Any], employee_id: str, amount: int
    ) -> dict[str, Any]:
        """Set an employee's yearly salary, in whole currency units."""
        caller = _require_scope(ctx, WRITE_SCOPE)
        employee = _lookup(directory, employee_id)
        if not 0 < amount <= _MAX_SALARY:
            msg = f"amount must be between 1 and {_MAX_SALARY}, got {amount}"
            raise ToolError(msg)
        previous = employee.salary
        directory[employee_id] = employee.model_copy(update={"salary": amount})
        return {
            "requested_by": caller,
            "employee_id": employee_id,
            "previous_salary": previous,
            "salary": amount,
        }

    @server.tool()
    async def generate_report(ctx: Context[Any, Any], n: int = 3) -> dict[str, Any]:
        """Build a headcount report in ``n`` steps, reporting progress after each."""
        caller = _require_scope(ctx, READ_SCOPE)
        if not 1 <= n <= _MAX_REPORT_STEPS:
            msg = f"n must be between 1 and {_MAX_REPORT_STEPS}, got {n}"
            raise ToolError(msg)
        await send_log(ctx, "info", f"generating a report in {n} steps")
        for step in range(1, n + 1):
            await anyio.sleep(_REPORT_STEP_DELAY)
            await ctx.report_progress(step, n, f"step {step} of {n}")
        headcount: dict[str, int] = {}
        for employee in directory.values():
            headcount[employee.department] = headcount.get(employee.department, 0) + 1
        await send_log(ctx, "info", "report ready")
        return {"requested_by": caller, "steps": n, "headcount": headcount}

    @server.tool()
    def failing_lookup(ctx: Context[Any, Any], employee_id: str) -> dict[str, Any]:
        """Look an employee up in the legacy HR system, which is always down."""
        _require_scope(ctx, READ_SCOPE)
        msg = f"the legacy HR system timed out while looking up {employee_id!r}"
        raise ToolError(msg)

    return server


def create_employees_app(
    *,
    resource: str,
    authorization_server: str,
    jwks_url: str,
    allowed_hosts: Sequence[str] = (),
    json_response: bool = False,
) -> Starlette:
    """Return the employees MCP server as an ASGI app serving ``/mcp``.

    Args:
        resource: This server's RFC 9728 resource, such as
            ``http://127.0.0.1:8001/mcp``; tokens must have it as ``aud``.
        authorization_server: Issuer of the tokens it accepts.
        jwks_url: JWK Set URL of that issuer.
        allowed_hosts: ``Host`` values to accept besides loopback.
        json_response: Answer each POST with one JSON body instead of an event
            stream. Progress and log messages are then not sent.
    """
    verifier = JwtAccessTokenVerifier(
        issuer=authorization_server, audience=resource, jwks_url=jwks_url
    )
    auth = AuthSettings(
        issuer_url=authorization_server,  # type: ignore[arg-type]
        resource_server_url=resource,  # type: ignore[arg-type]
        required_scopes=[READ_SCOPE],
        # The verifier compares aud with the resource itself, byte for byte.
        validate_token_resource=False,
    )
    server = _build_server(verifier, auth)
    app = server.streamable_http_app(
        transport_security=transport_security(allowed_hosts),
        json_response=json_response,
    )
    session_lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(scope_app: Starlette) -> AsyncIterator[None]:
        try:
            async with session_lifespan(scope_app):
                yield
        finally:
            await verifier.aclose()

    app.router.lifespan_context = lifespan
    app.add_middleware(ServerSpanMiddleware, component="employees", routes=("/mcp",))
    return app
