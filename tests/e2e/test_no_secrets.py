"""No token or secret of a full demo run appears in logs, spans or audit events.

The ``observed_run`` fixture (``conftest.py``) runs the demo in a subprocess
with JSON logs at DEBUG, every span recorded, and the audit file and journal
on disk, and collects the actual token strings of the run. The docstring of
``_no_secrets_run.py`` lists where each comes from. These tests search the
logs, spans and audit events for every one of them.
"""

from __future__ import annotations

import re

import pytest

from .conftest import ObservedRun

pytestmark = pytest.mark.e2e

JWT_SHAPE = re.compile(r"ey[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{2,}\.")

# Each kind of token the run must have found, as a label prefix of
# tokens.json, so that a change that stops collecting one fails the test
# instead of passing it vacuously.
EXPECTED_KINDS = {
    "gateway access token": "gateway/oauth2/token.access_token",
    "gateway refresh token": "gateway/oauth2/token.refresh_token",
    "gateway client secret": "gateway/oauth2/register.client_secret",
    "pre-registered client secret": "gateway.basic_secret",
    "gateway authorization code": "gateway.redirect.code",
    "PKCE verifier at the gateway": "gateway.form.code_verifier",
    "upstream ID token": "idp/oauth2/v1/token.id_token",
    "upstream refresh token": "idp/oauth2/v1/token.refresh_token",
    "upstream authorization code": "idp.redirect.code",
    "PKCE verifier at the IdP": "idp.form.code_verifier",
    "gateway secret at the IdP": "idp.basic_secret",
    "ID-JAG": "idp.id_jag",
    "backend access token": "idp/oauth2/employees/v1/token.access_token",
    "upstream tokens in the grant store": "grant.upstream_refresh_token",
    "config secrets": "config.secret.",
    "consent cookies": "gateway.set_cookie",
}
PLACES = ["logs", "spans", "audit"]


def all_tokens(run: ObservedRun) -> list[tuple[str, str]]:
    return [(label, value) for label, values in run.tokens.items() for value in values]


@pytest.mark.parametrize("kind", sorted(EXPECTED_KINDS))
def test_no_secrets_run_collects_token_kind(
    observed_run: ObservedRun, kind: str
) -> None:
    """The run found at least one token of each kind it searches for."""
    prefix = EXPECTED_KINDS[kind]
    found = [label for label, _ in all_tokens(observed_run) if label.startswith(prefix)]
    assert found, f"no {kind} collected (label prefix {prefix!r})"


def test_no_secrets_run_produced_output(observed_run: ObservedRun) -> None:
    """Logs, spans and audit events were captured, so the searches mean something."""
    assert observed_run.logs.count('"event": "request.completed"') >= 8
    assert observed_run.spans.count("\n") >= 50
    assert '"type":"TokenExchanged"' in observed_run.audit
    assert '"type":"TokenIssued"' in observed_run.audit


@pytest.mark.parametrize("place", PLACES)
def test_no_secrets_token_absent(observed_run: ObservedRun, place: str) -> None:
    """No collected token or secret appears anywhere in logs, spans or audit."""
    text = getattr(observed_run, place)
    leaks = [
        f"{label}: ...{text[max(0, text.index(value) - 120) : text.index(value)]}"
        for label, value in all_tokens(observed_run)
        if value in text
    ]
    assert leaks == []


@pytest.mark.parametrize("place", PLACES)
def test_no_secrets_no_jwt_shaped_string(observed_run: ObservedRun, place: str) -> None:
    """Nothing shaped like a JWT appears, even a token the run did not collect."""
    assert JWT_SHAPE.findall(getattr(observed_run, place)) == []
