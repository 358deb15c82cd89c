"""Who may talk to `vqclip serve`: Host and Origin checks, the access token, security headers.

Why each check (the usual attacks on a local web server):
- DNS rebinding: a page on evil.example re-points its own name at 127.0.0.1 and then reads/drives the server
  from the victim's browser. Its requests carry `Host: evil.example`, so only the names this server was
  started under are accepted (127.0.0.1, localhost, [::1], and the --host given).
- Cross-site POSTs: any page can make the victim's browser POST to http://127.0.0.1:8501 (a form, or fetch in
  no-cors mode). Browsers send `Origin` with every such request, so a state-changing request whose Origin is
  not this server's own is refused.
- Other people on the network: unless the server listens on loopback only, every request needs the token
  (given once as `?token=` in the printed URL, then kept in an HttpOnly, SameSite=Strict cookie, or sent as
  `Authorization: Bearer`), so that listening on a LAN never means anyone on it can use the GPU or read runs.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers streaming responses such as the event
stream).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

COOKIE = "vqclip_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")

# Our own page loads only what ships in the package; frames only from ourselves (the live gallery).
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self'; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'none'")

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def new_token() -> str:
    return secrets.token_urlsafe(24)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses no other machine can reach."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, int | None]:
    """`name:port`, `[v6]:port` or `name` → (lower-case name without brackets, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, port = value.split(":")
    else:
        name, port = value, ""
    return name, (int(port) if port.isdigit() and len(port) <= 5 else None if not port else -1)


@dataclass
class Guard:
    """The server's access rules: the names it answers to and, off loopback, its token."""

    bind: str  # the --host the server listens on
    port: int
    token: str | None = None  # None: no token needed (loopback only)
    extra_hosts: list[str] = field(default_factory=list)

    @classmethod
    def for_bind(cls, bind: str, port: int, token: str | None = None) -> Guard:
        """Loopback needs no token unless one is given; any other address always has one (made up if need be)."""
        if not is_loopback(bind) and not token:
            token = new_token()
        return cls(bind=bind, port=port, token=token or None)

    @property
    def any_host(self) -> bool:
        """Listening on every interface: the Host may be any of the machine's names (the token still holds)."""
        return self.bind in ("0.0.0.0", "::", "")

    def host_ok(self, header: str | None) -> bool:
        if not header:
            return False
        name, port = _split_host(header)
        if port == -1 or (port is not None and port != self.port):
            return False
        if self.any_host and self.token:
            return True
        names = {*LOOPBACK_NAMES, self.bind.strip("[]").lower(), *(h.lower() for h in self.extra_hosts)}
        return name in names

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        """A browser's Origin must be this very server (scheme://Host as the request named it)."""
        if origin is None:
            return True  # not a browser (curl, scripts): the Host check and the token still apply
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == (host or "").lower()

    def token_ok(self, given: str | None) -> bool:
        return self.token is None or (given is not None and hmac.compare_digest(given.encode(), self.token.encode()))

    def url(self) -> str:
        host = self.bind if self.bind not in ("0.0.0.0", "::", "") else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _given_token(headers: dict[str, str], query: str) -> tuple[str | None, bool]:
    """(the token the request carries, whether it came in the URL: then the reply sets the cookie)."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    from_query = parse_qs(query).get("token")
    if from_query:
        return from_query[0], True
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is simply no token
        return None, False
    morsel = cookie.get(COOKIE)
    return (morsel.value if morsel else None), False


async def reject(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]})
    await send({"type": "http.response.body", "body": body})


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"SAMEORIGIN"), (b"cross-origin-opener-policy", b"same-origin"),
                    (b"cross-origin-resource-policy", b"same-origin")]


class GuardMiddleware:
    """Refuse requests that fail the Host, Origin or token checks (one-line JSON 4xx); add security headers;
    turn a valid `?token=` into the cookie, so the page's own requests (and its event stream) carry it."""

    def __init__(self, app: Any, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        g = self.guard
        headers = _headers(scope)
        host = headers.get("host")
        if not g.host_ok(host):
            await reject(send, 421 if host else 400,
                         f"this server answers to {g.bind}:{g.port} (and localhost), not to Host {host!r}; "
                         "open the URL `vqclip serve` printed")
            return
        if scope.get("method", "GET") not in SAFE_METHODS and not g.origin_ok(headers.get("origin"), host):
            await reject(send, 403, f"cross-site request from {headers.get('origin')!r} refused; use the page "
                                    "this server serves")
            return
        given, in_query = _given_token(headers, scope.get("query_string", b"").decode("latin-1"))
        if not g.token_ok(given):
            await reject(send, 401, "this server needs its access token: open the URL with ?token=… that "
                                    "`vqclip serve` printed (or send Authorization: Bearer TOKEN)")
            return
        set_cookie = g.token is not None and in_query

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = list(SECURITY_HEADERS)
                if set_cookie:
                    extra.append((b"set-cookie", f"{COOKIE}={g.token}; Path=/; HttpOnly; SameSite=Strict".encode()))
                present = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": list(message.get("headers", []))
                           + [(k, v) for k, v in extra if k not in present]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["Guard", "GuardMiddleware", "PAGE_CSP", "COOKIE", "is_loopback", "new_token", "reject"]
