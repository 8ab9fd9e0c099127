"""Pattern presets and the walk that redacts the strings of MCP results."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.mcp.jsonrpc import MAX_DEPTH

Part = Literal["text", "structured", "resource"]
"""A part of a result that may be scanned.

- ``text``: the ``text`` of each ``text`` content item of a tool result;
- ``structured``: every string value inside a tool result's
  ``structuredContent``, at any depth (keys are not scanned);
- ``resource``: the ``text`` of each embedded ``resource`` content item of a
  tool result, and of each entry of a ``resources/read`` result's
  ``contents``.
"""

ALL_PARTS: tuple[Part, ...] = ("text", "structured", "resource")

OVERSIZED = "oversized"
"""The name put in the replacement of a string too long to scan."""

# Each preset starts with a literal or a lookbehind that fails inside a run of
# the characters it matches, so a search does not rescan the same run from
# every start position. Every repeat is possessive or bounded. On 1 MiB
# strings built to defeat them, such as one character or "a@" repeated, all
# five together took about 0.2 s. That was measured with CPython 3.11 on one
# core of the development machine, and ordinary text is faster.
PRESETS: dict[str, str] = {
    "email": (
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]++@[A-Za-z0-9-]++"
        r"(?:\.[A-Za-z0-9-]++)++"
    ),
    "aws_access_key": r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
    "bearer_token": r"(?<![A-Za-z0-9])(?i:bearer)[ \t]++[A-Za-z0-9._~+/-]{16,}+=*+",
    "jwt": r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]++(?:\.[A-Za-z0-9_-]*+){2,4}+",
    "private_key_block": (
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----[\s\S]*?"
        r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----|\Z)"
    ),
}
"""Built-in patterns by name.

- ``email``: an address with a dotted domain (``alice@example.com``);
- ``aws_access_key``: an AWS access key id (``AKIA`` or ``ASIA`` and 16 upper
  case letters or digits); secret access keys have no recognisable shape;
- ``bearer_token``: ``Bearer`` (any case) and a token of 16 or more RFC 6750
  characters, the word included;
- ``jwt``: a JWS or JWE in compact form, whose header starts ``eyJ``;
- ``private_key_block``: a PEM ``PRIVATE KEY`` block. A block without its
  ``END`` line is redacted to the end of the string.
"""


@dataclass
class Tally:
    """The redactions made in one response.

    Attributes:
        counts: Matches replaced, per pattern name.
        oversized: Strings replaced whole because they were too long to scan.
    """

    counts: Counter[str] = field(default_factory=Counter)
    oversized: int = 0

    def __bool__(self) -> bool:
        return bool(self.counts) or self.oversized > 0


class Redactor:
    """Replace pattern matches in the scanned parts of MCP results.

    The patterns are combined into one alternation and applied in a single
    pass over each string. Where several patterns match at the same position,
    the first in ``patterns`` wins. Each match is replaced by ``replacement``
    with ``{name}`` set to the pattern's name. A string longer than
    ``max_string_chars`` is not scanned: it is replaced whole, with
    ``{name}`` set to ``oversized``, so nothing in it can pass unseen. So is
    an array or object nested more than ``MAX_DEPTH`` (200) levels deep in
    structured content.

    The ``redact_*`` methods never change their argument. They return it
    unchanged when nothing matched, else a copy with the changed strings.
    """

    def __init__(
        self,
        patterns: Mapping[str, str],
        *,
        replacement: str,
        parts: Iterable[Part] = ALL_PARTS,
        max_string_chars: int,
    ) -> None:
        """Compile the patterns.

        Raises:
            re.error: The patterns cannot be combined, for example because
                two of them define the same group name.
        """
        self._names = {f"_{index}": name for index, name in enumerate(patterns)}
        alternatives = (
            f"(?P<_{index}>{pattern})"
            for index, pattern in enumerate(patterns.values())
        )
        self._regex = re.compile("|".join(alternatives)) if patterns else None
        self._replacements = {
            name: replacement.format(name=name) for name in [*patterns, OVERSIZED]
        }
        self.parts = frozenset(parts)
        self.max_string_chars = max_string_chars

    def redact_text(self, text: str, tally: Tally) -> str:
        """Return ``text`` with every match replaced, counting into ``tally``."""
        if len(text) > self.max_string_chars:
            tally.oversized += 1
            return self._replacements[OVERSIZED]
        if self._regex is None:
            return text

        def replace(match: re.Match[str]) -> str:
            name = self._names[match.lastgroup or ""]
            tally.counts[name] += 1
            return self._replacements[name]

        return self._regex.sub(replace, text)

    def redact_tool_result(self, result: dict[str, Any], tally: Tally) -> Any:
        """Redact a ``tools/call`` result: content items and structured content."""
        changed: dict[str, Any] = {}
        content = result.get("content")
        if isinstance(content, list):
            items = [self._redact_content_item(item, tally) for item in content]
            if any(new is not old for new, old in zip(items, content, strict=True)):
                changed["content"] = items
        if "structured" in self.parts and "structuredContent" in result:
            structured = result["structuredContent"]
            redacted = self._redact_strings(structured, tally)
            if redacted is not structured:
                changed["structuredContent"] = redacted
        return {**result, **changed} if changed else result

    def redact_read_result(self, result: dict[str, Any], tally: Tally) -> Any:
        """Redact a ``resources/read`` result: the text of each of its contents."""
        contents = result.get("contents")
        if "resource" not in self.parts or not isinstance(contents, list):
            return result
        items = [self._redact_field(item, "text", tally) for item in contents]
        if all(new is old for new, old in zip(items, contents, strict=True)):
            return result
        return {**result, "contents": items}

    def _redact_content_item(self, item: Any, tally: Tally) -> Any:
        if not isinstance(item, dict):
            return item
        kind = item.get("type")
        if kind == "text" and "text" in self.parts:
            return self._redact_field(item, "text", tally)
        if kind == "resource" and "resource" in self.parts:
            resource = item.get("resource")
            redacted = self._redact_field(resource, "text", tally)
            if redacted is not resource:
                return {**item, "resource": redacted}
        return item

    def _redact_field(self, item: Any, key: str, tally: Tally) -> Any:
        if not isinstance(item, dict):
            return item
        value = item.get(key)
        if not isinstance(value, str):
            return item
        redacted = self.redact_text(value, tally)
        return item if redacted == value else {**item, key: redacted}

    def _redact_strings(self, value: Any, tally: Tally, depth: int = 0) -> Any:
        if isinstance(value, str):
            redacted = self.redact_text(value, tally)
            return value if redacted == value else redacted
        if not isinstance(value, (list, dict)):
            return value
        if depth >= MAX_DEPTH:
            # Deeper nesting than a client accepts: replaced whole rather
            # than walked, so the recursion stays bounded.
            tally.oversized += 1
            return self._replacements[OVERSIZED]
        if isinstance(value, list):
            items = [self._redact_strings(item, tally, depth + 1) for item in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return items
        entries = {
            key: self._redact_strings(item, tally, depth + 1)
            for key, item in value.items()
        }
        if all(entries[key] is item for key, item in value.items()):
            return value
        return entries
