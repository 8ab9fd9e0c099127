"""Stage lookup: built-in names and ``module.path:Class`` references."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import Any


class StageLookupError(LookupError):
    """A stage reference that names no stage class."""


class StageRegistry:
    """Maps stage type names to stage classes.

    A reference is either a registered type name, optionally followed by
    ``/instance`` (``authorize/strict``), or an import path ``module.path:Class``.
    """

    def __init__(self, stages: Mapping[str, type[Any]] | None = None) -> None:
        self._stages: dict[str, type[Any]] = dict(stages or {})

    def register(self, type_name: str, cls: type[Any]) -> None:
        """Add a stage class under ``type_name``, replacing any earlier one."""
        self._stages[type_name] = cls

    @property
    def names(self) -> list[str]:
        """The registered type names, sorted."""
        return sorted(self._stages)

    def items(self) -> Iterable[tuple[str, type[Any]]]:
        """The registered ``(type name, class)`` pairs."""
        return self._stages.items()

    def resolve(self, ref: str) -> type[Any]:
        """Return the stage class that ``ref`` names.

        Raises:
            StageLookupError: The name is unknown or the import failed; the
                message names the cause and, for names, lists the known ones.
        """
        if ":" in ref:
            return _import_class(ref)
        type_name = ref.split("/", 1)[0]
        try:
            return self._stages[type_name]
        except KeyError:
            known = ", ".join(self.names)
            msg = f"unknown stage {ref!r}; known stages: {known}"
            raise StageLookupError(msg) from None


def _import_class(ref: str) -> type[Any]:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        msg = f"invalid stage reference {ref!r}; expected 'module.path:Class'"
        raise StageLookupError(msg)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"cannot import module {module_name!r} for stage {ref!r}: {exc}"
        raise StageLookupError(msg) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            msg = f"module {module_name!r} has no attribute {attr!r}"
            raise StageLookupError(msg) from None
    if not isinstance(obj, type):
        msg = f"stage reference {ref!r} names {type(obj).__name__}, not a class"
        raise StageLookupError(msg)
    return obj
