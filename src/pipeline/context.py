"""The per-request context that stages share."""

from __future__ import annotations

from typing import Any


class MissingFactError(KeyError):
    """Raised when a stage reads a fact that no stage has provided."""


class Context:
    """The state one request carries through a chain.

    Stages communicate only through facts: named values that one stage provides
    and later stages read. The chain builder checks statically that every fact a
    stage requires is provided by a stage before it, so :meth:`fact` failing at
    run time means a stage broke its own ``provides`` declaration.

    Host applications subclass this to add typed request fields.
    """

    __slots__ = ("facts",)

    def __init__(self) -> None:
        self.facts: dict[str, Any] = {}

    def provide(self, name: str, value: Any) -> None:
        """Store the fact ``name``, replacing an earlier value."""
        self.facts[name] = value

    def fact(self, name: str) -> Any:
        """Return the fact ``name``.

        Raises:
            MissingFactError: No stage provided the fact.
        """
        try:
            return self.facts[name]
        except KeyError:
            msg = f"fact {name!r} was not provided by any earlier stage"
            raise MissingFactError(msg) from None

    def get_fact(self, name: str, default: Any = None) -> Any:
        """Return the fact ``name``, or ``default`` when it is absent."""
        return self.facts.get(name, default)
