"""Removing tokens, assertions and secrets from log records.

:class:`Redactor` is a structlog processor. It walks every value of a log
record, through nested dicts, lists and tuples, and replaces:

- the whole value of a key named like a credential (:func:`is_sensitive_key`),
  such as ``authorization``, ``set-cookie``, ``x-api-key``,
  ``client_secret``, ``refresh_token`` or ``code``;
- inside any string, including rendered tracebacks and exception messages:

  - secrets registered with :meth:`Redactor.add_secrets`, such as the
    config's client secrets and API keys;
  - JWT- and JWE-shaped strings;
  - the credential after ``Bearer``, ``Basic`` or ``DPoP``;
  - the value of a sensitive query, form, ``key=value`` or JSON member;
  - opaque random strings of 40 or more URL-safe characters that mix upper
    case, lower case and digits.

The last rule is a heuristic: it catches the opaque refresh tokens,
authorization codes, PKCE verifiers and generated client secrets that this
gateway and the dev IdP create (43 to 64 characters), but an opaque token
shorter than 40 characters in free text is only caught by the other rules.
Identifiers that the gateway logs on purpose (32-character client and grant
ids, 32-digit hex request and trace ids) are shorter or lack upper case, so
they pass, and the rule spares the value of a key that names an identifier
(``kid``, ``jti``, ``*_id``, ``*_hash``) and, in free text, a string right
after the word ``kid``, ``jti`` or ``thumbprint`` (as in "no trusted key has
the kid 'AbC…'").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

REDACTED = "[REDACTED]"
"""The text that replaces a removed value."""

MIN_SECRET_LENGTH = 8
"""Registered secrets shorter than this are ignored: replacing a short common
word everywhere would make logs unreadable and protect little."""

_MAX_DEPTH = 12

# A key is split into lower-case words on "_", "-", "." and spaces, so that
# "X-Api-Key", "http.request.header.authorization" and "clientSecret" (after
# the camel-case split) are all recognised.
_ANY_WORD = frozenset({"secret", "secrets", "password", "passwd", "passphrase"})
_LAST_WORD = frozenset(
    {
        "token",
        "tokens",
        "jwt",
        "assertion",
        "authorization",
        "cookie",
        "cookies",
        "apikey",
        "credential",
        "credentials",
        "verifier",
        "bearer",
    }
)
_WHOLE_KEY = frozenset(
    {
        "code",
        "auth_code",
        "authorization_code",
        "device_code",
        "user_code",
        "id_jag",
        "idjag",
    }
)
_SUFFIXES = ("api_key", "private_key", "access_key", "secret_key", "signing_key")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[-.\s]+")


def is_sensitive_key(key: str) -> bool:
    """Return whether a mapping key names a credential whose value must go.

    Sensitive keys are those whose words include ``secret`` or ``password``,
    those ending in ``token``, ``assertion``, ``authorization``, ``cookie``,
    ``credentials``, ``verifier``, ``jwt``, ``api_key`` or ``private_key``,
    and ``code`` or ``authorization_code``. Keys such as ``token_id``,
    ``token_type``, ``token_endpoint`` and ``status_code`` are not.
    """
    normalized = _SEPARATORS.sub("_", _CAMEL.sub("_", key)).lower().strip("_")
    if normalized in _WHOLE_KEY:
        return True
    words = normalized.split("_")
    if _ANY_WORD.intersection(words):
        return True
    if words[-1] in _LAST_WORD:
        return True
    return normalized.endswith(_SUFFIXES)


# A "code" key also names error and warning codes (-32602,
# "okta_custom_server_for_id_jag"), which stay. OAuth authorization codes are
# random and never snake_case words.
_CODE_KEY = "code"
_NAMED_CODE = re.compile(r"[a-z][a-z0-9]*(?:[_.-][a-z0-9]+)+|-?[0-9]{1,6}")


# Values under these keys are public identifiers that happen to be long and
# random: a JWK thumbprint as "kid", a token's "jti", a 43-character hash. The
# opaque-string rule spares them, but the other rules still apply.
_IDENTIFIER_KEY = re.compile(
    r"(?:^|_)(?:id|ids|kid|jti|hash|thumbprint|fingerprint)$", re.IGNORECASE
)


def redacts(key: str, value: Any) -> bool:
    """Return whether the value under ``key`` must be removed.

    True for every sensitive key (:func:`is_sensitive_key`), except that
    ``code`` keeps an integer or a snake_case word such as
    ``okta_custom_server_for_id_jag``.
    """
    if not is_sensitive_key(key):
        return False
    if key.lower() != _CODE_KEY:
        return True
    if isinstance(value, int) and not isinstance(value, bool):
        return False
    return not (isinstance(value, str) and _NAMED_CODE.fullmatch(value))


# base64url of '{"' is "eyJ"; other JSON headers ('{ "', '{\n') start "ey" too.
# Three segments are a JWS (the signature may be empty with alg "none"), five
# a JWE.
_JWT = re.compile(
    r"(?<![A-Za-z0-9_-])ey[A-Za-z0-9_-]{8,}(?:\.[A-Za-z0-9_-]*){2}"
    r"(?:\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)?(?![A-Za-z0-9_-])"
)
# The credential after an HTTP authentication scheme, but not the first
# auth-param of a challenge such as 'Bearer error="invalid_token"'.
_AUTH_SCHEME = re.compile(
    r"\b(Bearer|Basic|DPoP)(\s+)(?![A-Za-z][A-Za-z0-9_-]*=\")"
    r"[A-Za-z0-9._~+/-]{6,}=*",
    re.IGNORECASE,
)
# key=value in URLs, form bodies, reprs and key=value log text. The value is
# quoted, or runs to the next separator.
_KEY_VALUE = re.compile(
    r"(?<![A-Za-z0-9_.-])([A-Za-z][A-Za-z0-9_.-]{0,63})=("
    r"'[^']*'|\"[^\"]*\"|[^&\s\"'<>#,;)\]}]*)"
)
# "key": "value" in JSON text and 'key': 'value' in Python reprs.
_QUOTED_MEMBER = re.compile(
    r"([\"'])([A-Za-z][A-Za-z0-9_.-]{0,63})\1(\s*:\s*)"
    r"(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
)
_HEADER_LINE = re.compile(
    r"(?im)^(\s*(?:authorization|proxy-authorization|cookie|set-cookie|"
    r"x-api-key)\s*:\s*)(\S.*)$"
)
# Keys set by structlog itself; "_record" is the standard library's LogRecord,
# which ProcessorFormatter still needs and removes before rendering.
_SKIPPED_KEYS = frozenset(
    {"timestamp", "level", "logger", "_record", "_from_structlog"}
)
_OPAQUE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{40,}(?![A-Za-z0-9_-])")
# The end of the text before an opaque string that names it as an identifier:
# "kid 'x'", "kid=x", "kid: x", '"kid": "x"'.
_IDENTIFIER_BEFORE = re.compile(
    r"\b(?:kid|jti|thumbprint)[\"']?\s*[:=]?\s*[\"']?$", re.IGNORECASE
)


def _redact_key_value(match: re.Match[str]) -> str:
    if redacts(match.group(1), match.group(2).strip("'\"")):
        return f"{match.group(1)}={REDACTED}"
    return match.group(0)


def _redact_quoted_member(match: re.Match[str]) -> str:
    if not redacts(match.group(2), match.group(4)[1:-1]):
        return match.group(0)
    quote = match.group(4)[0]
    return f"{match.group(1)}{match.group(2)}{match.group(1)}{match.group(3)}" + (
        f"{quote}{REDACTED}{quote}"
    )


def _redact_opaque(match: re.Match[str]) -> str:
    text = match.group(0)
    before = match.string[max(0, match.start() - 16) : match.start()]
    if _IDENTIFIER_BEFORE.search(before):
        return text
    mixed = (
        any(c.isupper() for c in text)
        and any(c.islower() for c in text)
        and any(c.isdigit() for c in text)
    )
    return REDACTED if mixed else text


class Redactor:
    """A structlog processor that removes credentials from every log record.

    The module docstring lists the rules. The processor never raises: a value
    it cannot walk deeper than twelve levels is replaced by ``[REDACTED]``.
    Values that are not strings, numbers, booleans, None or containers are
    rendered with ``repr`` and then scrubbed, as structlog's renderers would
    render them anyway.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._literal: re.Pattern[str] | None = None
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Register exact secret values to remove wherever they appear.

        Values shorter than :data:`MIN_SECRET_LENGTH` characters are ignored.
        """
        added = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        if not added - self._secrets:
            return
        self._secrets |= added
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._literal = re.compile("|".join(re.escape(s) for s in ordered))

    def scrub_text(self, text: str, *, opaque: bool = True) -> str:
        """Return ``text`` with every credential it contains replaced.

        ``opaque=False`` skips the rule for opaque random strings, for values
        that are known identifiers.
        """
        if len(text) < 6:
            return text
        if self._literal is not None:
            text = self._literal.sub(REDACTED, text)
        text = _JWT.sub(REDACTED, text)
        text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        text = _HEADER_LINE.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
        if "=" in text:
            text = _KEY_VALUE.sub(_redact_key_value, text)
        if ":" in text:
            text = _QUOTED_MEMBER.sub(_redact_quoted_member, text)
        return _OPAQUE.sub(_redact_opaque, text) if opaque else text

    def scrub(self, value: Any, depth: int = 0, *, opaque: bool = True) -> Any:
        """Return a copy of ``value`` with every credential removed.

        ``opaque=False`` spares opaque random strings in ``value`` itself, not
        in what it contains (see :meth:`scrub_text`).
        """
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            return self.scrub_text(value, opaque=opaque)
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, Mapping):
            return self._scrub_mapping(value, depth)
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub(item, depth + 1) for item in value]
        if isinstance(value, bytes | bytearray):
            return self.scrub_text(bytes(value).decode("utf-8", "replace"))
        if isinstance(value, BaseException):
            return f"{type(value).__name__}: {self.scrub_text(str(value))}"
        try:
            text = repr(value)
        except Exception:
            return REDACTED
        return self.scrub_text(text)

    def _scrub_mapping(self, value: Mapping[Any, Any], depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, str):
                if redacts(key, item):
                    out[key] = REDACTED
                    continue
                out[self.scrub_text(key)] = self.scrub(
                    item, depth + 1, opaque=not _IDENTIFIER_KEY.search(key)
                )
                continue
            out[key] = self.scrub(item, depth + 1)
        return out

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """Scrub a structlog event dict in place and return it."""
        for key in list(event_dict):
            if key in _SKIPPED_KEYS:
                continue
            value = event_dict[key]
            if key != "event" and redacts(key, value):
                event_dict[key] = REDACTED
            else:
                opaque = not _IDENTIFIER_KEY.search(key)
                event_dict[key] = self.scrub(value, opaque=opaque)
        return event_dict


def config_secrets(config: Any) -> list[str]:
    """Return the secret values of a config, to register with a :class:`Redactor`.

    ``config`` is a config Struct or its builtins form. Every string under a
    sensitive key (:func:`is_sensitive_key`) counts, and so does the
    ``value`` of a ``static-key`` backend credential.
    """
    import msgspec

    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("kind") == "static-key" and isinstance(node.get("value"), str):
                found.append(node["value"])
            for key, item in node.items():
                if isinstance(key, str) and is_sensitive_key(key):
                    found.extend(_strings_in(item))
                else:
                    walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(msgspec.to_builtins(config))
    return [value for value in found if value]


def _strings_in(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for item in node.values() for s in _strings_in(item)]
    if isinstance(node, list):
        return [s for item in node for s in _strings_in(item)]
    return []


default_redactor = Redactor()
"""The redactor in the processor chain that :mod:`gateway.logging_setup` installs."""
