"""The dashboard's browser session when auth is on: a cookie derived from the admin key.

A browser cannot send a bearer header when it navigates to ``/dashboard``, so the login form
posts the admin key once and gets an HttpOnly, SameSite=Strict cookie holding an HMAC of the
admin key (never the key itself). It is stateless — every worker and replica verifies it with
the key it already has — and changing the admin key invalidates every session.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE = "slmgw_dashboard"
MAX_AGE_S = 12 * 3600
_CONTEXT = b"slm-gateway dashboard session v1"


def session_token(admin_key: str) -> str:
    return hmac.new(admin_key.encode(), _CONTEXT, hashlib.sha256).hexdigest()


def valid_session(cookie: str | None, admin_key: str) -> bool:
    return cookie is not None and hmac.compare_digest(cookie.encode(), session_token(admin_key).encode())
