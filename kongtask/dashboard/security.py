"""What keeps the dashboard's buttons from being pressed by anyone but its operator.

* **CSRF.** Every state change is a POST carrying a token; the token is an
  HMAC, under a secret only this server knows, of a random value kept in a
  ``SameSite=Strict``, ``HttpOnly`` cookie. A page on another site can make a
  browser send the cookie (a top-level form post does not even do that under
  ``Strict``) but can never read it or compute the token. A POST whose
  ``Origin`` names another host, or that the browser marks ``cross-site``,
  is refused as well.
* **Auth** (standalone only: mounted, the host application's own auth
  applies): HTTP Basic for browsers or a bearer token for scripts and
  proxies, compared in constant time.
* **Headers.** A content security policy that allows only the dashboard's own
  script and stylesheet (no inline script at all), no framing, no sniffing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSRF_COOKIE = "kongtask_csrf"
CSRF_FIELD = "csrf_token"

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
)


class CsrfGuard:
    """Issues and checks the per-browser token (see the module docstring)."""

    def __init__(self, secret: bytes | str | None = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        self._secret = secret or secrets.token_bytes(32)

    @staticmethod
    def new_cookie_value() -> str:
        return secrets.token_urlsafe(32)

    def token_for(self, cookie_value: str) -> str:
        digest = hmac.new(self._secret, cookie_value.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def check(self, cookie_value: str | None, token: str | None) -> bool:
        """Whether ``token`` was issued for this browser's cookie."""
        if not cookie_value or not token:
            return False
        return hmac.compare_digest(self.token_for(cookie_value), token)


def same_origin(headers: MutableMapping[str, str] | Any) -> str | None:
    """Why a state-changing request looks cross-site, or None when it does not.

    ``Origin`` (sent by browsers on every POST) must name the host the
    request was sent to (``Host``, or ``X-Forwarded-Host`` behind a proxy
    that rewrites it); ``Sec-Fetch-Site`` must not say ``cross-site``.
    Requests without either (scripts, old browsers) rely on the token alone,
    which is the real defence; this check is a second one.
    """
    site = headers.get("sec-fetch-site")
    if site == "cross-site":
        return "the browser marked this request cross-site"
    origin = headers.get("origin")
    if origin and origin != "null":
        hosts = {headers.get("host", ""), headers.get("x-forwarded-host", "")}
        origin_host = origin.split("://", 1)[-1].rstrip("/")
        if origin_host not in hosts:
            return f"it came from {origin!r}, not from this dashboard ({headers.get('host', '')})"
    elif origin == "null":
        return "it came from an opaque origin"
    return None


# ---------------------------------------------------------------- auth
@dataclass(frozen=True, slots=True)
class Credentials:
    """``basic`` with a user and password, or ``bearer`` with a token."""

    scheme: str
    secret: str
    user: str = ""

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """``basic:USER:PASSWORD`` or ``bearer:TOKEN``; a ConfigError that never echoes them."""
        scheme, _, rest = text.partition(":")
        scheme = scheme.strip().lower()
        if scheme == "basic":
            user, sep, password = rest.partition(":")
            if not sep or not user or not password:
                raise ConfigError("--auth: expected basic:USER:PASSWORD (both non-empty)")
            return cls("basic", password, user)
        if scheme == "bearer":
            if len(rest) < 16:
                raise ConfigError("--auth: a bearer token must be at least 16 characters")
            return cls("bearer", rest)
        raise ConfigError("--auth: expected basic:USER:PASSWORD or bearer:TOKEN")

    def __repr__(self) -> str:  # never show the secret
        return f"Credentials(scheme={self.scheme!r}, user={self.user!r})"

    def accepts(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() != self.scheme:
            return False
        if self.scheme == "bearer":
            return hmac.compare_digest(value.encode(), self.secret.encode())
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        # Both compared, always: the time taken says nothing about which was wrong.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.secret.encode())
        return user_ok and password_ok


class AuthMiddleware:
    """Refuses every HTTP request without the configured credentials (401)."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
        if self.credentials.accepts(header):
            await self.app(scope, receive, send)
            return
        challenge = (
            b'Basic realm="kongtask dashboard", charset="UTF-8"'
            if self.credentials.scheme == "basic"
            else b'Bearer realm="kongtask dashboard"'
        )
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", challenge),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"authentication required\n"})


class SecurityHeadersMiddleware:
    """Adds :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)
