"""SigningKeys: persistence, rotation, JWKS, and signature verification."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pathlib
import stat

import pytest

from gateway.oauth.keys import SigningKeys, TokenVerificationError


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def test_load_or_create_new_file_is_private(tmp_path: pathlib.Path) -> None:
    """A new key file is created with its directories and mode 0600."""
    path = tmp_path / "a" / "b" / "signing.json"
    SigningKeys.load_or_create(path)
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_or_create_existing_file_keeps_key(tmp_path: pathlib.Path) -> None:
    """Loading the same file again gives the same key, so tokens survive restarts."""
    path = tmp_path / "signing.json"
    first = SigningKeys.load_or_create(path)
    token = first.sign({"sub": "x"})
    second = SigningKeys.load_or_create(path)
    assert second.kid == first.kid
    assert second.verify(token, algorithms=["ES256"])[1] == {"sub": "x"}


def test_load_or_create_algorithm_change_rotates(tmp_path: pathlib.Path) -> None:
    """A new algorithm adds a key and keeps the old one for verification."""
    path = tmp_path / "signing.json"
    old = SigningKeys.load_or_create(path, "ES256")
    old_token = old.sign({"sub": "x"})
    new = SigningKeys.load_or_create(path, "RS256")
    assert new.algorithm == "RS256"
    assert new.kid != old.kid
    assert [key["kid"] for key in new.jwks()["keys"]] == [new.kid, old.kid]
    assert new.verify(old_token, algorithms=["ES256", "RS256"])[1]["sub"] == "x"
    assert SigningKeys.load_or_create(path, "RS256").kid == new.kid


def test_rotate_keeps_retired_keys_published(keys: SigningKeys) -> None:
    """Rotation publishes the new key first and keeps every retired key."""
    kids = [keys.kid]
    for _ in range(3):
        keys.rotate()
        kids.insert(0, keys.kid)
    published = [key["kid"] for key in keys.jwks()["keys"]]
    assert published == kids


def test_rotate_persists_to_file(keys: SigningKeys) -> None:
    """A rotation is written to the key file."""
    assert keys.path is not None
    keys.rotate()
    reloaded = SigningKeys.load_or_create(keys.path)
    assert reloaded.kid == keys.kid
    assert len(reloaded.jwks()["keys"]) == 2


def test_jwks_has_public_members_only(keys: SigningKeys) -> None:
    """The JWKS carries no private key material."""
    (key,) = keys.jwks()["keys"]
    assert "d" not in key
    assert key["kid"] == keys.kid
    assert key["alg"] == "ES256"
    assert key["use"] == "sig"


def test_load_or_create_invalid_file_raises(tmp_path: pathlib.Path) -> None:
    """A key file that is not a JWK Set of private keys fails to load."""
    path = tmp_path / "signing.json"
    path.write_text('{"keys": []}')
    with pytest.raises(ValueError, match="non-empty 'keys'"):
        SigningKeys.load_or_create(path)
    public = SigningKeys.load_or_create(tmp_path / "other.json").jwks()
    path.write_text(json.dumps(public))
    with pytest.raises(ValueError, match="public key"):
        SigningKeys.load_or_create(path)


def test_load_or_create_unsupported_algorithm_raises(tmp_path: pathlib.Path) -> None:
    """Only ES256 and RS256 can sign."""
    with pytest.raises(ValueError, match="HS256"):
        SigningKeys.load_or_create(tmp_path / "k.json", "HS256")


def test_sign_header_has_kid_and_typ(keys: SigningKeys) -> None:
    """A signed token names its key and type."""
    header, _ = keys.verify(keys.sign({"a": 1}), algorithms=["ES256"])
    assert header == {"alg": "ES256", "kid": keys.kid, "typ": "at+jwt"}


def test_verify_alg_none_rejected(keys: SigningKeys) -> None:
    """An unsigned token is rejected even when 'none' is in the allow-list."""
    token = f"{b64json({'alg': 'none', 'kid': keys.kid})}.{b64json({'a': 1})}."
    with pytest.raises(TokenVerificationError) as info:
        keys.verify(token, algorithms=["ES256", "none"])
    assert info.value.reason == "algorithm_not_allowed"


def test_verify_hs256_with_public_key_rejected(keys: SigningKeys) -> None:
    """A token MACed with the public key as HMAC secret is rejected."""
    public = json.dumps(keys.jwks()["keys"][0]).encode()
    signing_input = f"{b64json({'alg': 'HS256', 'kid': keys.kid})}.{b64json({'a': 1})}"
    mac = hmac.new(public, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(TokenVerificationError) as info:
        keys.verify(f"{signing_input}.{b64(mac)}", algorithms=["ES256", "HS256"])
    assert info.value.reason == "algorithm_not_allowed"


def test_verify_algorithm_outside_allow_list_rejected(tmp_path: pathlib.Path) -> None:
    """An RS256 token is rejected when only ES256 is allowed."""
    keys = SigningKeys.load_or_create(tmp_path / "k.json", "RS256")
    with pytest.raises(TokenVerificationError) as info:
        keys.verify(keys.sign({"a": 1}), algorithms=["ES256"])
    assert info.value.reason == "algorithm_not_allowed"


def test_verify_unknown_kid_rejected(keys: SigningKeys, tmp_path: pathlib.Path) -> None:
    """A token signed by another key is rejected as an unknown key."""
    other = SigningKeys.load_or_create(tmp_path / "other.json")
    with pytest.raises(TokenVerificationError) as info:
        keys.verify(other.sign({"a": 1}), algorithms=["ES256"])
    assert info.value.reason == "unknown_key"


def test_verify_reused_kid_other_key_rejected(
    keys: SigningKeys, tmp_path: pathlib.Path
) -> None:
    """A token claiming our kid but signed by another key fails the signature."""
    other = SigningKeys.load_or_create(tmp_path / "other.json")
    _, payload, signature = other.sign({"a": 1}).split(".")
    header = b64json({"alg": "ES256", "kid": keys.kid, "typ": "at+jwt"})
    with pytest.raises(TokenVerificationError) as info:
        keys.verify(f"{header}.{payload}.{signature}", algorithms=["ES256"])
    assert info.value.reason == "bad_signature"


def test_verify_tampered_payload_rejected(keys: SigningKeys) -> None:
    """Changing a claim breaks the signature."""
    header, _, signature = keys.sign({"sub": "alice"}).split(".")
    forged = f"{header}.{b64json({'sub': 'bob'})}.{signature}"
    with pytest.raises(TokenVerificationError) as info:
        keys.verify(forged, algorithms=["ES256"])
    assert info.value.reason == "bad_signature"


def test_verify_tampered_signature_rejected(keys: SigningKeys) -> None:
    """A flipped signature byte is detected."""
    header, payload, signature = keys.sign({"sub": "alice"}).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[5] ^= 0x01
    with pytest.raises(TokenVerificationError) as info:
        keys.verify(f"{header}.{payload}.{b64(bytes(raw))}", algorithms=["ES256"])
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    "token",
    ["", "not-a-jwt", "a.b", "a.b.c.d", "!!!.???.***", "é.é.é"],
)
def test_verify_malformed_token_rejected(keys: SigningKeys, token: str) -> None:
    """Anything that is not a compact JWS is rejected as malformed."""
    with pytest.raises(TokenVerificationError) as info:
        keys.verify(token, algorithms=["ES256"])
    assert info.value.reason == "malformed"


def test_verify_crit_header_rejected(keys: SigningKeys) -> None:
    """A token with a 'crit' header is rejected before verification."""
    token = f"{b64json({'alg': 'ES256', 'kid': keys.kid, 'crit': ['exp']})}.e30.sig"
    with pytest.raises(TokenVerificationError) as info:
        keys.verify(token, algorithms=["ES256"])
    assert info.value.reason == "malformed"


def test_verify_oversized_token_rejected(keys: SigningKeys) -> None:
    """A token longer than 16 KiB is rejected without parsing."""
    with pytest.raises(TokenVerificationError) as info:
        keys.verify("a" * 20000, algorithms=["ES256"])
    assert info.value.reason == "malformed"
