"""Fixtures of the integration tests."""

from _devidp_fixtures import *  # noqa: F403
