r"""Load-time checks that reject regular expressions which can backtrack forever.

Python's ``re`` engine backtracks, so a pattern such as ``(a+)+b`` takes time
exponential in the length of the text it fails on, and it blocks the event
loop while it runs. :func:`pattern_problem` rejects the shapes that cause
exponential time:

- a backtracking repeat whose body contains a repeat of variable count
  (``(a+)+``, ``(?:\.\w{2,6})+``, ``(?:ab?)+``);
- an alternation inside a backtracking repeat (``(a|ab)+``);
- backreferences (``(a)\1``) and conditional groups.

A backtracking repeat is one that may match more than once and is not
possessive; inside it, only repeats of a fixed count (``\d{4}``) are
accepted. A possessive repeat (``*+``, ``++``, ``{m,n}+``) or an atomic group
(``(?>...)``) never gives back what it matched, so the repeats and
alternations inside it are checked on their own, as if at the top level.

NOTE: the check does not find every slow pattern. Two adjacent repeats that
can match the same text (``\w*\w*x``) take polynomial time, and a pattern
that starts with an unbounded repeat (``.*secret``) takes time quadratic in
the length of a string that does not match. Start such patterns with a
literal or a lookbehind boundary such as ``(?<![A-Za-z0-9])``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

MAX_PATTERN_LENGTH = 512
"""Maximum length of a pattern, in characters."""

# The parser behind re.compile. It has been re._parser since Python 3.11; the
# old public alias sre_parse warns on import.
_parser: Any = importlib.import_module("re._parser")
_constants: Any = importlib.import_module("re._constants")

_BACKTRACKING_REPEATS = frozenset({_constants.MAX_REPEAT, _constants.MIN_REPEAT})
_BACKREFERENCES = frozenset(
    {
        _constants.GROUPREF,
        _constants.GROUPREF_EXISTS,
        _constants.GROUPREF_IGNORE,
        _constants.GROUPREF_LOC_IGNORE,
        _constants.GROUPREF_UNI_IGNORE,
    }
)
_POSSESSIVE_HINT = (
    "make the outer repeat possessive (*+, ++, {m,n}+) or wrap its body in an "
    "atomic group (?>...)"
)


def pattern_problem(pattern: str) -> str | None:
    """Return why ``pattern`` is not accepted, or None when it is.

    A pattern is accepted when it has at most :data:`MAX_PATTERN_LENGTH`
    characters, compiles, cannot match the empty string, and passes the
    backtracking checks of this module. It must not set a global inline flag
    such as ``(?i)``, because the flag would apply to the other patterns it is
    combined with; the scoped form ``(?i:...)`` is accepted.
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        return (
            f"the pattern has {len(pattern)} characters, more than the "
            f"{MAX_PATTERN_LENGTH} allowed"
        )
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"the pattern does not compile: {exc}"
    try:
        parsed = _parser.parse(f"(?:{pattern})")
    except re.error:
        return (
            "the pattern sets a global inline flag such as (?i); use a scoped "
            "flag group such as (?i:...) instead"
        )
    if parsed.getwidth()[0] == 0:
        return "the pattern can match the empty string; require at least one character"
    return _walk(parsed, inside_repeat=False)


def _walk(items: Any, *, inside_repeat: bool) -> str | None:
    for op, value in items:
        problem: str | None = None
        if op in _BACKTRACKING_REPEATS:
            low, high, body = value
            if inside_repeat and low != high:
                return (
                    f"the pattern nests one repeat inside another; {_POSSESSIVE_HINT}"
                )
            problem = _walk(body, inside_repeat=inside_repeat or high > 1)
        elif op == _constants.POSSESSIVE_REPEAT:
            problem = _walk(value[2], inside_repeat=False)
        elif op == _constants.ATOMIC_GROUP:
            problem = _walk(value, inside_repeat=False)
        elif op == _constants.SUBPATTERN:
            problem = _walk(value[3], inside_repeat=inside_repeat)
        elif op == _constants.BRANCH:
            if inside_repeat:
                return (
                    f"the pattern repeats an alternation (a|b...); {_POSSESSIVE_HINT}"
                )
            for branch in value[1]:
                problem = problem or _walk(branch, inside_repeat=inside_repeat)
        elif op in (_constants.ASSERT, _constants.ASSERT_NOT):
            problem = _walk(value[1], inside_repeat=inside_repeat)
        elif op in _BACKREFERENCES:
            return "the pattern uses a backreference or a conditional group"
        if problem is not None:
            return problem
    return None
