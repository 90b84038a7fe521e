"""What keeps the dashboard to its viewer: the token, the Host check, CSRF and the
headers that forbid inline scripts and framing.

The history names hosts, runs and errors, and the outbox buttons send messages, so a
page on another site must neither read it (a DNS-rebinding name pointing at
127.0.0.1 is refused by the Host check) nor press its buttons (every POST carries
the page's CSRF token).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Collection
from urllib.parse import urlencode

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_COOKIE = "afs_dashboard_token"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

#: Scripts only from this server (no inline script, no eval), nothing framed or framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def same(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a token."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware: a Host the server answers to, the token when one is set, and
    the security headers on every answer."""

    def __init__(self, app: ASGIApp, *, token: str | None, allowed_hosts: Collection[str] | None) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await self._with_headers(refusal)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), *((k.encode(), v.encode()) for k, v in HEADERS.items())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        if self.allowed_hosts is not None and _host_name(request.headers.get("host", "")) not in self.allowed_hosts:
            return PlainTextResponse("This dashboard answers only to its own address.", status_code=421)
        if self.token is None:
            return None
        given = request.query_params.get("token")
        if given is not None:
            if not same(given, self.token):
                return PlainTextResponse("Wrong token.", status_code=403)
            # Once: the token becomes a cookie and leaves the address bar (and the history).
            kept = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = URL(scope=request.scope).replace(query=urlencode(kept))
            response = RedirectResponse(str(target.path) + (f"?{target.query}" if target.query else ""),
                                        status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
            return response
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer ") and same(bearer[7:].strip(), self.token):
            return None
        if same(request.cookies.get(TOKEN_COOKIE), self.token):
            return None
        return PlainTextResponse("This dashboard needs its token: open it once as /?token=T, or send "
                                 "'Authorization: Bearer T'.", status_code=401)

    @staticmethod
    def _with_headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers[name] = value
        return response
