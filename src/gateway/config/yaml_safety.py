"""Parsing config YAML within fixed bounds of size and alias expansion.

A config file is read at start-up, by ``agent-proxy check`` and on every
reload. A file that is very large, or whose aliases expand to a huge tree
(a "billion laughs" file), would otherwise take seconds or gigabytes to
process, so both are refused with a clear error before any of that work.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import Node

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_YAML_VALUES",
    "YamlLimitError",
    "parse_yaml",
    "size_problem",
]

MAX_CONFIG_BYTES = 1024 * 1024
"""Largest config file accepted, in bytes (1 MiB)."""

MAX_YAML_VALUES = 100_000
"""Maximum number of YAML values (scalars, lists and mappings) in a config,
counting each alias as the values it refers to."""


class YamlLimitError(yaml.YAMLError):
    """The YAML text exceeds :data:`MAX_YAML_VALUES` or has a recursive alias."""


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that counts values as aliases expand them.

    Composing a node counts it and everything below it. An alias counts the
    size of the node it refers to, computed when that node was composed. The
    loader raises once the count passes :data:`MAX_YAML_VALUES`, so no huge
    expansion is ever built.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._values = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor  # type: ignore[no-untyped-call]
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                msg = f"the alias *{anchor} refers to a node that contains it"
                raise YamlLimitError(msg)
            self._count(size)
            return node
        before = self._values
        node = super().compose_node(parent, index)
        self._count(1)
        self._sizes[id(node)] = self._values - before
        return node

    def _count(self, size: int) -> None:
        self._values += size
        if self._values > MAX_YAML_VALUES:
            msg = (
                f"the config has more than {MAX_YAML_VALUES} values, counting "
                "each alias as the values it stands for"
            )
            raise YamlLimitError(msg)


def parse_yaml(text: str) -> Any:
    """Parse one YAML document with the safe loader, within the bounds.

    Raises:
        YamlLimitError: The document contains more than :data:`MAX_YAML_VALUES`
            values once its aliases are expanded, or an alias refers to a
            node that contains it.
        yaml.YAMLError: The text is not valid YAML.
    """
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def size_problem(source: str, size: int) -> str | None:
    """Return the problem of a config file of ``size`` bytes, or None."""
    if size <= MAX_CONFIG_BYTES:
        return None
    return (
        f"{source}: the config file has {size} bytes; the limit is "
        f"{MAX_CONFIG_BYTES} bytes (1 MiB)"
    )
