"""Stage lookup: type names, entry points and ``module.path:Class`` references.

A stage reference, as written in a chain, is ``<kind>[/<instance>]``:

- ``kind`` is a registered type name (``authorize``), matching
  :data:`TYPE_NAME`, or an import path ``module.path:Class``;
- ``instance`` optionally names one configured instance of that kind
  (``authorize/strict``), matching :data:`INSTANCE_NAME`. Each instance has
  its own settings, so two instances of one type can differ.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

TYPE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
"""A stage type name: a letter, then up to 62 letters, digits or ``_``."""

INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
"""An instance name: up to 63 letters, digits, ``_`` or ``-``, not starting
with ``_`` or ``-``."""

IMPORT_PATH = re.compile(
    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
    r":[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
)
"""A class by import path: ``module.path:Class`` or ``module:Outer.Inner``."""


class StageLookupError(LookupError):
    """A stage reference that names no stage class."""


@dataclass(frozen=True)
class StageRef:
    """A parsed stage reference.

    Attributes:
        kind: The type name, or the ``module.path:Class`` import path.
        instance: The instance name after ``/``, or None.
    """

    kind: str
    instance: str | None = None

    @property
    def is_import_path(self) -> bool:
        """Whether ``kind`` is a ``module.path:Class`` import path."""
        return ":" in self.kind

    def __str__(self) -> str:
        return self.kind if self.instance is None else f"{self.kind}/{self.instance}"


def parse_ref(ref: str) -> StageRef:
    """Split a stage reference into its kind and instance name.

    Raises:
        StageLookupError: The reference is malformed. The message names the
            part at fault and what it may contain.
    """
    kind, slash, instance = ref.partition("/")
    if ":" in kind:
        if not IMPORT_PATH.fullmatch(kind):
            msg = (
                f"invalid stage reference {ref!r}; expected 'module.path:Class', "
                "optionally followed by '/instance'"
            )
            raise StageLookupError(msg)
    elif not TYPE_NAME.fullmatch(kind):
        msg = (
            f"invalid stage type {kind!r} in {ref!r}; a type name starts with a "
            "letter and contains only letters, digits and '_' (at most 63)"
        )
        raise StageLookupError(msg)
    if not slash:
        return StageRef(kind)
    if not INSTANCE_NAME.fullmatch(instance):
        msg = (
            f"invalid instance name {instance!r} in {ref!r}; an instance name "
            "contains only letters, digits, '_' and '-' (at most 63), and starts "
            "with a letter or digit"
        )
        raise StageLookupError(msg)
    return StageRef(kind, instance)


def stage_type(ref: str) -> str:
    """Return the kind of a reference without validating it: ``a/x`` gives ``a``."""
    return ref.partition("/")[0]


@dataclass(frozen=True)
class StageOrigin:
    """The origin of a stage class, for messages and ``check`` output.

    Attributes:
        kind: ``registered`` (passed to the registry by the host), ``entry
            point`` or ``import path``.
        detail: For an entry point, ``name = value`` and its distribution;
            otherwise empty.
    """

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.detail}" if self.detail else self.kind


REGISTERED = StageOrigin("registered")
"""The origin of a class the host passed to the registry."""
_IMPORTED = StageOrigin("import path")


class StageRegistry:
    """Maps stage type names to stage classes.

    Classes come from the host (:meth:`register`) and from an entry-point
    group (:meth:`add_entry_points`). Entry points are loaded on first use,
    so a broken plug-in that no chain uses does not stop the others. A
    reference with ``:`` is imported instead.

    Attributes:
        problems: Problems found while registering entry points (a name
            conflict, an invalid name), each a full sentence. Hosts report
            them with the chain problems.
    """

    def __init__(self, stages: Mapping[str, type[Any]] | None = None) -> None:
        self._stages: dict[str, type[Any]] = dict(stages or {})
        self._origins: dict[str, StageOrigin] = {}
        self._entry_points: dict[str, EntryPoint] = {}
        self.problems: list[str] = []

    def register(self, type_name: str, cls: type[Any]) -> None:
        """Add a stage class under ``type_name``, replacing any earlier one."""
        self._stages[type_name] = cls
        self._entry_points.pop(type_name, None)

    def add_entry_points(self, group: str) -> None:
        """Register every entry point of ``group`` under its name, lazily.

        An entry point is loaded when a reference first needs it. A name that
        is already registered, that two distributions both use, or that is
        not a valid type name is not registered and is recorded in
        :attr:`problems` instead.
        """
        seen: dict[str, EntryPoint] = {}
        for entry_point in entry_points(group=group):
            name = entry_point.name
            where = f"entry point {name!r} of {describe_distribution(entry_point)}"
            if not TYPE_NAME.fullmatch(name):
                self.problems.append(
                    f"{group}: {where} has an invalid stage type name; a type name "
                    "starts with a letter and contains only letters, digits and '_'"
                )
            elif name in self._stages:
                self.problems.append(
                    f"{group}: {where} uses the name of a built-in stage, "
                    f"{name!r}; rename the entry point or uninstall the package"
                )
            elif name in seen:
                other = describe_distribution(seen[name])
                self.problems.append(
                    f"{group}: {where} uses the same name as the entry point of "
                    f"{other}; uninstall one of the two packages"
                )
                self._entry_points.pop(name, None)
            else:
                seen[name] = entry_point
                self._entry_points[name] = entry_point

    @property
    def names(self) -> list[str]:
        """The registered type names, entry points included, sorted."""
        return sorted({*self._stages, *self._entry_points})

    def items(self) -> Iterable[tuple[str, type[Any]]]:
        """The ``(type name, class)`` pairs loaded so far.

        Entry points that no reference has needed yet are not loaded, so
        they are not included.
        """
        return list(self._stages.items())

    def origin(self, ref: str) -> StageOrigin:
        """Return where the class of a resolved reference came from."""
        kind = stage_type(ref)
        if ":" in kind:
            return _IMPORTED
        return self._origins.get(kind, REGISTERED)

    def resolve(self, ref: str) -> type[Any]:
        """Return the stage class that ``ref`` names.

        Raises:
            StageLookupError: The reference is malformed, the name is unknown,
                or the import or entry point failed; the message names the
                cause and, for names, lists the known ones.
        """
        parsed = parse_ref(ref)
        if parsed.is_import_path:
            return _import_class(parsed.kind)
        kind = parsed.kind
        if kind in self._stages:
            return self._stages[kind]
        entry_point = self._entry_points.get(kind)
        if entry_point is None:
            known = ", ".join(self.names)
            msg = f"unknown stage {ref!r}; known stages: {known}"
            raise StageLookupError(msg)
        cls = _load_entry_point(entry_point)
        self._stages[kind] = cls
        self._origins[kind] = StageOrigin(
            "entry point",
            f"{entry_point.name} = {entry_point.value} "
            f"({describe_distribution(entry_point)})",
        )
        del self._entry_points[kind]
        return cls


def describe_distribution(entry_point: EntryPoint) -> str:
    """Return ``distribution 'name version'`` for an entry point's package."""
    dist = entry_point.dist
    if dist is None:
        return "an unknown distribution"
    return f"distribution '{dist.name} {dist.version}'"


def _load_entry_point(entry_point: EntryPoint) -> type[Any]:
    where = (
        f"entry point {entry_point.name!r} ({entry_point.value}) of "
        f"{describe_distribution(entry_point)}"
    )
    try:
        obj = entry_point.load()
    except Exception as exc:
        # Loading runs the plug-in's import-time code, which may raise anything.
        msg = f"cannot load stage {where}: {type(exc).__name__}: {exc}"
        raise StageLookupError(msg) from exc
    if not isinstance(obj, type):
        msg = f"{where} names {type(obj).__name__}, not a class"
        raise StageLookupError(msg)
    return obj


def _import_class(ref: str) -> type[Any]:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        msg = f"cannot import module {module_name!r} for stage {ref!r}: {exc}"
        raise StageLookupError(msg) from exc
    except Exception as exc:
        # Importing runs the module's top-level code, which may raise anything.
        msg = (
            f"cannot import module {module_name!r} for stage {ref!r}: "
            f"{type(exc).__name__}: {exc}"
        )
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
