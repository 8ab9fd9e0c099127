"""The OAuth 2.1 front door: the authorization server that MCP clients see."""
