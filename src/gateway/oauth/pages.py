"""The HTML pages people see during sign-in: the consent page and error pages.

Every value shown is escaped; the pages carry no token and no script.
"""

from __future__ import annotations

from html import escape
from urllib.parse import urlsplit

from gateway.oauth.transactions import AuthorizationRequest

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;background:#f4f5f7;
color:#1d2129;margin:0;display:flex;min-height:100vh;align-items:center;
justify-content:center}
main{background:#fff;border-radius:12px;box-shadow:0 2px 12px rgba(0,0,0,.08);
padding:32px 36px;max-width:480px;width:100%}
h1{font-size:1.3rem;margin:0 0 16px}
p{line-height:1.5;margin:0 0 12px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:6px 16px;margin:16px 0 24px;
font-size:.92rem}
dt{color:#5e6670}dd{margin:0;word-break:break-all}
.buttons{display:flex;gap:12px}
button{flex:1;font-size:1rem;padding:10px 0;border-radius:8px;cursor:pointer;
border:1px solid #c4c9d0;background:#fff}
button.approve{background:#1f5fd6;border-color:#1f5fd6;color:#fff}
.note{font-size:.85rem;color:#5e6670;margin-top:16px}
a.return{display:inline-block;margin-top:8px;padding:10px 16px;border-radius:8px;
border:1px solid #c4c9d0;color:#1d2129;text-decoration:none}
"""


def consent_page(
    request: AuthorizationRequest, *, action: str, transaction: str
) -> str:
    """Return the page that asks the user to approve or deny a client.

    Args:
        request: The validated authorization request.
        action: The absolute URL of ``POST /oauth2/consent``.
        transaction: The single-use transaction id posted back by the form.
    """
    client = request.client_name or "An unnamed client"
    redirect_host = urlsplit(request.redirect_uri).netloc
    trust = {
        "verified": "verified",
        "self-asserted": "self-asserted by the client",
        "unknown": "not recognised",
    }.get(request.agent_trust, request.agent_trust)
    rows = [
        ("Client", client),
        ("Client ID", request.client_id),
        ("Agent", f"{request.agent_id} ({trust})"),
        ("Service", request.backend),
        ("Resource", request.resource),
        ("Returns to", redirect_host),
    ]
    details = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Allow access?</title><style>{_STYLE}</style></head>
<body><main>
<h1>Allow {escape(client)} to use {escape(request.backend)}?</h1>
<p>After you approve, you sign in at your identity provider, and this client
can call <strong>{escape(request.backend)}</strong> on your behalf.</p>
<dl>{details}</dl>
<form method="post" action="{escape(action)}">
<input type="hidden" name="transaction" value="{escape(transaction)}">
<div class="buttons">
<button type="submit" name="decision" value="deny">Deny</button>
<button type="submit" name="decision" value="approve" class="approve">Approve</button>
</div></form>
<p class="note">Only approve if you started this sign-in yourself.</p>
</main></body></html>
"""


def error_page(title: str, message: str) -> str:
    """Return a page explaining an error that cannot be sent back to the client."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_STYLE}</style></head>
<body><main><h1>{escape(title)}</h1><p>{escape(message)}</p></main></body></html>
"""


def error_redirect_page(
    error: str, description: str, *, location: str, client: str
) -> str:
    """Return a page that names an OAuth error and links back to the client.

    For an error found at authorize, before the user acted, for a client
    whose redirect URI the gateway cannot trust: the user decides whether to
    follow the link instead of being redirected at once.

    Args:
        error: The OAuth error code, such as ``access_denied``.
        description: The ``error_description`` sent with it.
        location: The client's redirect URI with the error parameters.
        client: The client's name, or its id when it registered none.
    """
    host = urlsplit(location).netloc
    rows = [("Error", error), ("Application", client), ("Returns to", host)]
    details = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign-in stopped: {escape(error)}</title><style>{_STYLE}</style></head>
<body><main>
<h1>Sign-in stopped: {escape(error)}</h1>
<p>{escape(description)}</p>
<dl>{details}</dl>
<a class="return" rel="noreferrer" href="{escape(location)}">
Return to {escape(host)}</a>
<p class="note">This gateway cannot verify the application, so it does not
send you back on its own. Return only if you started this sign-in yourself.</p>
</main></body></html>
"""
