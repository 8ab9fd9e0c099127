"""Errors raised by the pipeline engine.

```
PipelineError
├── ChainConfigError   the chain declaration is invalid (all problems at once)
└── TerminalStageError a terminal stage called the next stage
```
"""

from __future__ import annotations

from collections.abc import Sequence


class PipelineError(Exception):
    """Base class of every error the pipeline engine raises."""


class ChainConfigError(PipelineError):
    """A chain declaration that cannot be built.

    Attributes:
        problems: One message per problem, each prefixed with its YAML path.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class TerminalStageError(PipelineError):
    """Raised when the last stage of a chain calls ``call_next``."""
