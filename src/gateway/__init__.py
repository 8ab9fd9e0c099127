"""Okta Agent Proxy: an MCP security gateway built on the ``pipeline`` engine."""

__version__ = "0.1.0"
