"""The web console's signed sign-in sessions: what its cookie holds instead of the admin token.

A session is `<expiry epoch s>.<random id>.<HMAC-SHA256(key, "<expiry>.<id>")>` (hex). The key
is derived from the admin token, so nothing but the token can sign a session, the cookie never
holds the token (a leaked cookie, a log line or a browser profile does not give the token
away, and a cookie stops working when it expires), and changing the token signs everyone out.

Sessions are stateless: nothing is kept on the server, so signing out forgets the cookie in
that browser, while a copy taken before stays valid until it expires or the token changes.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

# expiry (ASCII digits), id (hex), signature (hex): anything else is refused before any parsing.
SESSION = re.compile(r"([0-9]{1,12})\.([0-9a-f]{32})\.([0-9a-f]{64})")
_KEY_LABEL = b"earmark console session v1"


def _key(admin_token: str) -> bytes:
    """The signing key: the token's own HMAC of a fixed label, never the token itself."""
    return hmac.new(admin_token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _signature(admin_token: str, expiry: str, session_id: str) -> str:
    return hmac.new(_key(admin_token), f"{expiry}.{session_id}".encode(), hashlib.sha256).hexdigest()


def issue_session(admin_token: str, lifetime_s: float, now: float | None = None) -> str:
    """A new session cookie value, valid for `lifetime_s` from `now` (default: the clock)."""
    expiry = str(int((time.time() if now is None else now) + lifetime_s))
    session_id = secrets.token_hex(16)
    return f"{expiry}.{session_id}.{_signature(admin_token, expiry, session_id)}"


def check_session(cookie: str, admin_token: str, now: float | None = None) -> str:
    """What a presented cookie is worth: "ok", "expired" (signed by this token, but past its
    expiry), "invalid" (malformed, tampered with, or signed under another token) or "missing".
    The signature is checked before the expiry, so a forged expiry is "invalid"."""
    if not cookie:
        return "missing"
    parts = SESSION.fullmatch(cookie)
    if parts is None:
        return "invalid"
    expiry, session_id, signature = parts.groups()
    if not hmac.compare_digest(signature, _signature(admin_token, expiry, session_id)):
        return "invalid"
    return "ok" if int(expiry) > (time.time() if now is None else now) else "expired"
