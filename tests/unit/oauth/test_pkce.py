"""PKCE S256 helpers."""

from __future__ import annotations

from gateway.oauth import pkce

# RFC 7636 appendix B.
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_s256_challenge_rfc_example_matches() -> None:
    """The RFC 7636 example verifier hashes to the example challenge."""
    assert pkce.s256_challenge(RFC_VERIFIER) == RFC_CHALLENGE


def test_verify_s256_matching_pair_accepted() -> None:
    """A verifier and its own challenge match."""
    assert pkce.verify_s256(RFC_VERIFIER, RFC_CHALLENGE)


def test_verify_s256_other_verifier_rejected() -> None:
    """Another verifier does not match the challenge."""
    assert not pkce.verify_s256(RFC_VERIFIER[:-1] + "A", RFC_CHALLENGE)


def test_verify_s256_plain_method_rejected() -> None:
    """Sending the challenge itself as verifier (plain method) does not match."""
    assert not pkce.verify_s256(RFC_CHALLENGE, RFC_CHALLENGE)


def test_is_valid_verifier_length_and_charset() -> None:
    """Verifiers are 43 to 128 unreserved characters."""
    assert pkce.is_valid_verifier("a" * 43)
    assert pkce.is_valid_verifier("a" * 128)
    assert not pkce.is_valid_verifier("a" * 42)
    assert not pkce.is_valid_verifier("a" * 129)
    assert not pkce.is_valid_verifier("a" * 42 + "+")


def test_is_valid_challenge_requires_43_base64url() -> None:
    """An S256 challenge is exactly 43 base64url characters."""
    assert pkce.is_valid_challenge(RFC_CHALLENGE)
    assert not pkce.is_valid_challenge(RFC_CHALLENGE + "=")
    assert not pkce.is_valid_challenge(RFC_CHALLENGE[:-1])
    assert not pkce.is_valid_challenge("+" * 43)


def test_new_code_verifier_valid_and_random() -> None:
    """Generated verifiers are valid and differ."""
    first, second = pkce.new_code_verifier(), pkce.new_code_verifier()
    assert pkce.is_valid_verifier(first)
    assert first != second
