"""The presets, the pattern checks, the result walk and the settings of ``redact``."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest

from gateway.chains import plan_backend_chains
from gateway.config import load_config_text
from gateway.errors import ConfigError
from gateway.stages._redactor import PRESETS, Redactor, Tally
from gateway.stages._regex_safety import MAX_PATTERN_LENGTH, pattern_problem
from gateway.stages.redact import RedactConfig, build_redactor

CONFIG = """
server: {{public_url: "http://127.0.0.1:8000"}}
upstream: {{issuer: "http://127.0.0.1:9000", client_id: gw, client_secret: s}}
backends:
  partners:
    path: /partners/mcp
    url: http://127.0.0.1:8002/mcp
    auth: {{kind: static-key, header: X-Api-Key, value: k}}
pipeline: [audit, authenticate, identify_agent, authorize, redact, exchange,
           session, forward]
stages:
  redact:
{settings}
"""
JWT = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIwMHVfYWxpY2UifQ.MEUCIQDx-_abc"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX\n"
    "-----END RSA PRIVATE KEY-----"
)


def redactor(**settings: Any) -> Redactor:
    return build_redactor(msgspec.convert(settings, RedactConfig))


def redact(text: str, **settings: Any) -> tuple[str, dict[str, int]]:
    tally = Tally()
    return redactor(**settings).redact_text(text, tally), dict(tally.counts)


@pytest.mark.parametrize(
    ("preset", "text", "expected"),
    [
        ("email", "mail a.b+c@mail.example.co.uk now", "mail [R:email] now"),
        ("email", "<carol@example.org>.", "<[R:email]>."),
        ("email", "user@localhost and @handle", "user@localhost and @handle"),
        ("aws_access_key", "id AKIAIOSFODNN7EXAMPLE,", "id [R:aws_access_key],"),
        ("aws_access_key", "ASIAY34FZKBOKMUTVV7A", "[R:aws_access_key]"),
        ("aws_access_key", "XAKIAIOSFODNN7EXAMPLE", "XAKIAIOSFODNN7EXAMPLE"),
        ("aws_access_key", "AKIAIOSFODNN7EXAMPL", "AKIAIOSFODNN7EXAMPL"),
        (
            "bearer_token",
            "Authorization: Bearer abcdefghijklmnop0123==",
            "Authorization: [R:bearer_token]",
        ),
        ("bearer_token", "BEARER a1b2c3d4e5f6g7h8i9", "[R:bearer_token]"),
        ("bearer_token", "the bearer of bad news", "the bearer of bad news"),
        ("jwt", f"token={JWT} end", "token=[R:jwt] end"),
        ("jwt", "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "[R:jwt]"),
        ("jwt", "eyJ alone", "eyJ alone"),
        (
            "private_key_block",
            f"key:\n{PEM}\nafter",
            "key:\n[R:private_key_block]\nafter",
        ),
        (
            "private_key_block",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQ (cut off",
            "[R:private_key_block]",
        ),
        (
            "private_key_block",
            "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----",
        ),
    ],
)
def test_preset_matches_only_its_shape(preset: str, text: str, expected: str) -> None:
    """Each preset replaces what it names and leaves look-alikes."""
    redacted, _counts = redact(text, presets=[preset], replacement="[R:{name}]")
    assert redacted == expected


def test_presets_pass_own_pattern_checks() -> None:
    """The built-in patterns obey the rules that own patterns must follow."""
    assert {name: pattern_problem(p) for name, p in PRESETS.items()} == dict.fromkeys(
        PRESETS
    )


@pytest.mark.parametrize(
    "text",
    [
        "a" * 200_000,
        "a@" * 100_000,
        "a." * 100_000,
        "-----BEGIN " * 20_000,
        "eyJa." * 40_000,
        "bearer " * 30_000,
    ],
    ids=["letters", "at-signs", "dots", "pem-headers", "jwt-headers", "bearers"],
)
def test_presets_scan_hostile_text_in_linear_time(text: str) -> None:
    """Text built to make a backtracking search rescan runs stays fast.

    The bound is loose (a quadratic scan of 200,000 characters takes
    minutes), so a slow machine does not fail it.
    """
    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 5.0


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("(a+)+b", "nests one repeat inside another"),
        (r"(?:\.\w{2,6})+", "nests one repeat inside another"),
        ("(?:ab?)*c", "nests one repeat inside another"),
        ("(?:a|ab)+", "repeats an alternation"),
        (r"(a)\1", "backreference"),
        ("(?(1)a|b)", "does not compile"),
        ("(a)?(?(1)b|c)", "conditional group"),
        ("(?i)secret", "global inline flag"),
        ("x*", "can match the empty string"),
        ("(?=a)", "can match the empty string"),
        ("[a-", "does not compile"),
        ("a" * (MAX_PATTERN_LENGTH + 1), f"more than the {MAX_PATTERN_LENGTH}"),
    ],
)
def test_pattern_problem_rejects_unsafe_patterns(pattern: str, problem: str) -> None:
    """Patterns that may backtrack exponentially or match nothing are rejected."""
    found = pattern_problem(pattern)
    assert found is not None
    assert problem in found


@pytest.mark.parametrize(
    "pattern",
    [
        r"EMP-\d{6}",
        r"(?:\.\w{2,6})++",
        r"(?>a|ab)+c",
        r"(?:\.\d{2})+",
        r"(?i:secret)-[a-z]++",
        r"(?<![A-Za-z])ticket-\d+",
    ],
)
def test_pattern_problem_accepts_safe_patterns(pattern: str) -> None:
    """Possessive, atomic and fixed-count forms pass the check."""
    assert pattern_problem(pattern) is None


def test_redactor_first_listed_pattern_wins() -> None:
    """Where two patterns match at one place, the one listed first replaces it."""
    redacted, counts = redact(
        "mail carol@example.org",
        presets=["email"],
        patterns={"mailbox": r"carol@[a-z.]++"},
    )
    assert redacted == "mail [REDACTED:email]"
    assert counts == {"email": 1}


def test_redactor_tool_result_scans_chosen_parts() -> None:
    """Only the parts listed in scan change; other content is kept as is."""
    result = {
        "content": [
            {"type": "text", "text": "t carol@example.org"},
            {
                "type": "resource",
                "resource": {"uri": "r://1", "text": "r carol@example.org"},
            },
            {"type": "image", "data": "carol@example.org", "mimeType": "image/png"},
        ],
        "structuredContent": {"a": [{"b": "s carol@example.org"}, 3, None]},
        "isError": False,
    }
    every = redactor(presets=["email"]).redact_tool_result(result, Tally())
    text_only = redactor(presets=["email"], scan=["text"]).redact_tool_result(
        result, Tally()
    )

    assert every["content"][0]["text"] == "t [REDACTED:email]"
    assert every["content"][1]["resource"]["text"] == "r [REDACTED:email]"
    assert every["content"][2] == result["content"][2]
    assert every["structuredContent"] == {"a": [{"b": "s [REDACTED:email]"}, 3, None]}
    assert every["isError"] is False
    assert text_only["content"][0]["text"] == "t [REDACTED:email]"
    assert text_only["content"][1] is result["content"][1]
    assert text_only["structuredContent"] is result["structuredContent"]
    assert result["content"][0]["text"] == "t carol@example.org"


def test_redactor_unchanged_result_returned_as_is() -> None:
    """A result without matches comes back as the same object."""
    result = {"content": [{"type": "text", "text": "nothing"}], "structuredContent": {}}
    assert redactor().redact_tool_result(result, Tally()) is result


def test_redactor_read_result_redacts_contents_text() -> None:
    """A resources/read result has its contents' text scanned."""
    result = {"contents": [{"uri": "r://1", "text": "carol@example.org"}]}
    tally = Tally()
    redacted = redactor().redact_read_result(result, tally)
    assert redacted["contents"][0] == {"uri": "r://1", "text": "[REDACTED:email]"}
    assert dict(tally.counts) == {"email": 1}


def test_redactor_oversized_string_replaced_whole() -> None:
    """A string longer than max_string_chars is replaced, not scanned."""
    tally = Tally()
    text = "x" * 2000
    redacted = redactor(max_string_chars=1024).redact_text(text, tally)
    assert redacted == "[REDACTED:oversized]"
    assert tally.oversized == 1
    assert not tally.counts


def test_redactor_deep_structured_content_replaced_whole() -> None:
    """Structured content nested past 200 levels is replaced at that depth."""
    deep: Any = "carol@example.org"
    for _ in range(300):
        deep = [deep]
    tally = Tally()
    redacted = redactor().redact_tool_result({"structuredContent": deep}, tally)
    inner = redacted["structuredContent"]
    for _ in range(199):
        inner = inner[0]
    assert inner == ["[REDACTED:oversized]"]
    assert tally.oversized == 1


def test_redact_settings_valid_accepted() -> None:
    """Own patterns, a template and filters pass the chain check."""
    settings = (
        "    presets: [email, jwt]\n"
        "    patterns: {employee_id: 'EMP-\\d{6}'}\n"
        "    replacement: '<{name}>'\n"
        "    scan: [text]\n"
        "    tools: ['get_*']\n"
        "    methods: [tools/call, resources/read]"
    )
    plan_backend_chains(
        load_config_text(CONFIG.format(settings=settings), source="test.yaml")
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            "    presets: [mail]",
            "stages.redact: presets: unknown preset 'mail'; known presets: email, "
            "aws_access_key, bearer_token, jwt, private_key_block",
        ),
        ("    presets: [jwt, jwt]", "presets lists 'jwt' twice; remove one"),
        (
            "    patterns: {Employee: 'E-\\d+'}",
            "stages.redact: patterns.Employee: invalid name 'Employee'",
        ),
        (
            "    patterns: {email: 'x@y'}",
            "patterns.email: the name 'email' is reserved for a preset",
        ),
        (
            "    patterns: {oversized: 'x'}",
            "patterns.oversized: the name 'oversized' is reserved",
        ),
        (
            "    patterns: {slow: '(a+)+$'}",
            "stages.redact: patterns.slow: the pattern nests one repeat inside "
            "another; make the outer repeat possessive",
        ),
        (
            "    patterns: {a: '(?P<g>x)', b: '(?P<g>y)'}",
            "the patterns cannot be combined",
        ),
        ("    presets: []", "presets and patterns are both empty"),
        ("    replacement: '{value}'", "may contain only the placeholder {name}"),
        ("    replacement: '{name!r}'", "may contain only the placeholder {name}"),
        ("    replacement: '{'", "is not a valid template"),
        ("    scan: []", "scan is an empty list"),
        (
            "    scan: [body]",
            "scan[0]: Invalid value; expected one of: resource, structured, text",
        ),
        (
            "    methods: [prompts/get]",
            "methods[0]: Invalid value; expected one of: resources/read, tools/call",
        ),
        ("    tools: []", "tools is an empty list"),
        ("    max_string_chars: 10", "Expected `int` >= 1024"),
    ],
)
def test_redact_invalid_settings_rejected(settings: str, message: str) -> None:
    """Each invalid setting fails the check with a message naming it."""
    text = CONFIG.format(settings=settings)
    with pytest.raises(ConfigError) as raised:
        plan_backend_chains(load_config_text(text, source="test.yaml"))
    assert any(message in problem for problem in raised.value.problems), (
        raised.value.problems
    )


def test_redact_replacement_literal_braces_kept() -> None:
    """Doubled braces in the template are literal braces in the output."""
    redacted, _counts = redact("carol@example.org", replacement="{{{name}}}")
    assert redacted == "{email}"
