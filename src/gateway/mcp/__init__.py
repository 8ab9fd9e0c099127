"""MCP streamable HTTP: JSON-RPC envelopes, SSE, responses and the endpoint."""
