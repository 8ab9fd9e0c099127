"""The ``redact`` stage: remove configured patterns from tool results."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

import msgspec

from gateway.context import RequestContext
from gateway.events import ResultRedacted
from gateway.mcp.jsonrpc import same_id
from gateway.mcp.response import GatewayResponse
from gateway.mcp.sse import transform_messages
from gateway.stages._redactor import (
    ALL_PARTS,
    OVERSIZED,
    PRESETS,
    Part,
    Redactor,
    Tally,
)
from gateway.stages._regex_safety import pattern_problem
from pipeline import BaseStage, Next

RedactedMethod = Literal["tools/call", "resources/read"]

ResultTransform = Callable[[dict[str, Any], dict[str, Any], Tally], Any]
"""Redacts the result of one JSON-RPC response: (message, result, tally)."""

DEFAULT_REPLACEMENT = "[REDACTED:{name}]"
MAX_REPLACEMENT_LENGTH = 200
_PATTERN_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


class RedactConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of the ``redact`` stage."""

    presets: list[str] = msgspec.field(default_factory=lambda: list(PRESETS))
    """Built-in patterns to apply: ``email``, ``aws_access_key``,
    ``bearer_token``, ``jwt``, ``private_key_block``; all of them by default."""
    patterns: dict[str, str] = msgspec.field(default_factory=dict)
    """Own patterns: a name (lower case, digits, ``_``) to a Python regex."""
    replacement: str = DEFAULT_REPLACEMENT
    """The text put in place of a match; ``{name}`` becomes the pattern name."""
    scan: list[Part] = msgspec.field(default_factory=lambda: list(ALL_PARTS))
    """The parts of a result to scan: ``text``, ``structured``, ``resource``."""
    tools: list[str] | None = None
    """Tool name patterns (``*`` and ``?`` wildcards) whose results are
    redacted; unset means every tool."""
    methods: list[RedactedMethod] = msgspec.field(
        default_factory=lambda: ["tools/call"]
    )
    """Whose results are redacted: ``tools/call`` and ``resources/read``."""
    max_string_chars: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024
    """Maximum length of a scanned string, in characters; a longer one is
    replaced whole."""

    def __post_init__(self) -> None:
        """Check names, patterns, the replacement and the lists.

        Raises:
            ValueError: The first problem found, naming the key and the fix;
                for the patterns, every bad pattern at once.
        """
        _check_presets(self.presets)
        problems = []
        for name, pattern in self.patterns.items():
            try:
                _check_pattern(name, pattern)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        if not self.presets and not self.patterns:
            msg = (
                "no pattern to apply: presets and patterns are both empty; "
                "list presets or add patterns"
            )
            raise ValueError(msg)
        _check_replacement(self.replacement)
        for key, values in (("scan", self.scan), ("methods", self.methods)):
            if not values:
                msg = f"{key} is an empty list; list at least one, or remove {key}"
                raise ValueError(msg)
        if self.tools is not None and not self.tools:
            msg = (
                "tools is an empty list, so nothing would be redacted; list tool "
                "names, or remove tools to redact every tool's results"
            )
            raise ValueError(msg)
        try:
            build_redactor(self)
        except re.error as exc:
            msg = (
                f"the patterns cannot be combined: {exc}; give their named "
                "groups distinct names or use (?:...) groups"
            )
            raise ValueError(msg) from None


def build_redactor(config: RedactConfig) -> Redactor:
    """Return the redactor of a config: its presets in order, then its patterns.

    Raises:
        re.error: The patterns cannot be combined into one expression.
    """
    patterns = {name: PRESETS[name] for name in config.presets}
    patterns.update(config.patterns)
    return Redactor(
        patterns,
        replacement=config.replacement,
        parts=config.scan,
        max_string_chars=config.max_string_chars,
    )


def _check_presets(presets: list[str]) -> None:
    seen: set[str] = set()
    for name in presets:
        if name not in PRESETS:
            known = ", ".join(PRESETS)
            msg = f"presets: unknown preset {name!r}; known presets: {known}"
            raise ValueError(msg)
        if name in seen:
            msg = f"presets lists {name!r} twice; remove one"
            raise ValueError(msg)
        seen.add(name)


def _check_pattern(name: str, pattern: str) -> None:
    where = f"patterns.{name}"
    if not _PATTERN_NAME.fullmatch(name):
        msg = (
            f"{where}: invalid name {name!r}; use 1 to 64 lower-case letters, "
            "digits and _, starting with a letter"
        )
        raise ValueError(msg)
    if name in PRESETS or name == OVERSIZED:
        msg = (
            f"{where}: the name {name!r} is reserved for "
            f"{'a preset' if name in PRESETS else 'strings too long to scan'}; "
            "choose another name"
        )
        raise ValueError(msg)
    problem = pattern_problem(pattern)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")


def _check_replacement(replacement: str) -> None:
    if len(replacement) > MAX_REPLACEMENT_LENGTH:
        msg = (
            f"replacement has {len(replacement)} characters, more than the "
            f"{MAX_REPLACEMENT_LENGTH} allowed"
        )
        raise ValueError(msg)
    try:
        fields = list(string.Formatter().parse(replacement))
    except ValueError as exc:
        msg = f"replacement {replacement!r} is not a valid template: {exc}"
        raise ValueError(msg) from None
    for _literal, field, spec, conversion in fields:
        if field is None:
            continue
        if field != "name" or spec or conversion:
            msg = (
                f"replacement {replacement!r} may contain only the placeholder "
                "{name}; write a literal brace as {{ or }}"
            )
            raise ValueError(msg)


class RedactStage(BaseStage[RequestContext, GatewayResponse]):
    """Remove configured patterns from tool results before they reach the agent.

    Requires and provides no fact, so it can sit anywhere before ``forward``;
    after ``identify_agent`` its events name the user and agent. It never
    ends the chain early.

    On the way back it rewrites the response to a POSTed ``tools/call`` of a
    tool that ``tools`` matches (and to ``resources/read`` when ``methods``
    lists it): only the JSON-RPC response to the request changes.
    Notifications such as progress, requests from the server and errors pass
    as they are. JSON bodies and event streams are both handled, streams
    event by event as they arrive. A GET stream can replay the events of an
    earlier POST stream (``Last-Event-ID``), so on a GET stream every result
    shaped as a tool result (or a read result, when ``methods`` lists
    ``resources/read``) is redacted, whatever its tool.

    When a response is finished and anything was removed, it publishes
    ``ResultRedacted`` with the count per pattern name, never the values.

    NOTE: scanning runs on the event loop, in time linear in the size of the
    result for the presets. A custom pattern that the load-time check
    accepts can still be slower (see ``_regex_safety``).
    """

    stability = "alpha"
    Config = RedactConfig

    def __init__(self, *, name: str, config: RedactConfig, resources: Any) -> None:
        super().__init__(name=name, config=config, resources=resources)
        self.redactor = build_redactor(config)

    async def handle(
        self, ctx: RequestContext, call_next: Next[RequestContext, GatewayResponse]
    ) -> GatewayResponse:
        """Run the chain, then redact the result in its response."""
        response = await call_next(ctx)
        transform = self._transform_for(ctx)
        if transform is None:
            return response
        tally = Tally()

        def redact(message: dict[str, Any]) -> dict[str, Any] | None:
            result = message.get("result")
            if "method" in message or not isinstance(result, dict):
                return None
            redacted = transform(message, result, tally)
            if redacted is result:
                return None
            return {**message, "result": redacted}

        async def report(_outcome: Any) -> None:
            if tally:
                await ctx.runtime.publish(
                    ResultRedacted(
                        **ctx.event_fields(self.name),
                        counts=dict(sorted(tally.counts.items())),
                        oversized=tally.oversized,
                    )
                )

        redacted = transform_messages(response, redact)
        redacted.on_close.append(report)
        return redacted

    def _transform_for(self, ctx: RequestContext) -> ResultTransform | None:
        """Return the function that redacts a result for this request, or None."""
        methods = self.config.methods
        message = ctx.message
        redactor = self.redactor
        if ctx.http_method == "GET":

            def replayed(
                _msg: dict[str, Any], result: dict[str, Any], tally: Tally
            ) -> Any:
                if isinstance(result.get("contents"), list):
                    if "resources/read" in methods:
                        return redactor.redact_read_result(result, tally)
                    return result
                if "tools/call" in methods:
                    return redactor.redact_tool_result(result, tally)
                return result

            return replayed
        if ctx.http_method != "POST" or message is None or message.kind != "request":
            return None
        if message.method not in methods:
            return None
        if message.method == "tools/call" and not self._tool_matches(ctx.tool):
            return None
        redact_result = (
            redactor.redact_tool_result
            if message.method == "tools/call"
            else redactor.redact_read_result
        )

        def answered(msg: dict[str, Any], result: dict[str, Any], tally: Tally) -> Any:
            if not same_id(msg.get("id"), message.id):
                return result
            return redact_result(result, tally)

        return answered

    def _tool_matches(self, tool: str | None) -> bool:
        if self.config.tools is None or tool is None:
            return True
        return any(fnmatchcase(tool, pattern) for pattern in self.config.tools)
