"""The demo: the demo MCP backends and helpers that run apps in-process."""
