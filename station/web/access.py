"""Who may read the operator page: Host and Origin checks, and a token when it is bound beyond this box.

* **Host** (DNS rebinding): a page on an attacker's site whose name was re-pointed at the station
  would otherwise be same-origin with it. The ``Host`` header must be an IP address literal,
  ``localhost``, or one of ``http.allowed_hosts`` — never some other name.
* **Origin / Sec-Fetch-Site**: a request a browser marks as coming from another site (another
  origin's ``fetch``, an ``<img>`` pointing at the live picture from elsewhere) is refused, reads
  and PIN actions alike.
* **Token**: bound beyond 127.0.0.1, every page, stream and picture also needs the station's token
  (``operator-token`` in the data dir, created 0600; ``stationctl operator-url`` prints the URL
  with it, the kiosk opens that URL). ``?token=`` on a page load sets an HttpOnly SameSite=Strict
  cookie and redirects to the same URL without it; API clients may send ``Authorization: Bearer``.

``/healthz`` and ``/favicon.ico`` stay open (no data).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from station.ops.fileio import private_secret
from station.ops.ratelimit import FailureLog

log = logging.getLogger("station.web.access")

TOKEN_NAME = "operator-token"
TOKEN_COOKIE = "operator_token"
OPEN_PATHS = frozenset({"/healthz", "/favicon.ico"})


def is_loopback(listen: str) -> bool:
    """Return whether the listen address ``listen`` is reachable only from this box."""
    try:
        return ipaddress.ip_address(listen).is_loopback
    except ValueError:
        return listen == "localhost"


def load_token(data_dir: Path) -> str:
    """Return the operator page's token from ``data_dir``, created (0600, 32 random bytes, URL-safe base64) if absent."""
    token = private_secret(Path(data_dir) / TOKEN_NAME, lambda: secrets.token_urlsafe(32))
    if len(token) < 16:
        raise ValueError(f"{Path(data_dir) / TOKEN_NAME}: the token is too short (delete the file to make a new one)")
    return token


def host_name(host_header: str) -> str | None:
    """Return the name in a ``Host`` header without its port ([v6] unbracketed), lower case; None if malformed."""
    host = host_header.strip().lower()
    if not host or len(host) > 255:
        return None
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 and (end == len(host) - 1 or host[end + 1] == ":") else None
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


@dataclass
class AccessPolicy:
    """The checks for one operator page: allowed host names and, when bound beyond loopback, the token."""

    allowed_hosts: frozenset[str] = frozenset()
    token: str | None = None  # None = no token needed (bound to loopback only)
    refused: dict[str, int] = field(default_factory=dict)

    def host_ok(self, host_header: str) -> bool:
        """Return whether ``Host`` names an address literal, ``localhost`` or an allowed host (no DNS rebinding)."""
        name = host_name(host_header)
        if name is None:
            return False
        if name == "localhost" or name in self.allowed_hosts:
            return True
        try:
            ipaddress.ip_address(name)  # an address literal cannot be re-pointed by DNS
            return True
        except ValueError:
            return False

    def origin_ok(self, origin: str | None, host_header: str, fetch_site: str | None) -> bool:
        """Return whether the browser marks the request as same-origin (or sends no mark at all)."""
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return False
        if origin is None:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:  # "http://[": a header no browser sends is refused, not a server error
            return False
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.strip().lower()

    def token_ok(self, supplied: str | None) -> bool:
        """Return whether ``supplied`` is the token (compared in constant time), or none is needed."""
        return self.token is None or (supplied is not None and hmac.compare_digest(supplied.encode(), self.token.encode()))


class OperatorAccess:
    """Apply :class:`AccessPolicy` to every request of the operator app (a pure ASGI wrapper)."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy
        self.failures = FailureLog(log, "operator page access", interval_s=60.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an allowed request to the app; answer any other with 421/403/401 and count it."""
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        policy = self.policy
        if not policy.host_ok(host):
            await self._refuse(send, 421, "bad_host", "this page answers only to its address, localhost or http.allowed_hosts")
            return
        if not policy.origin_ok(headers.get("origin"), host, headers.get("sec-fetch-site")):
            await self._refuse(send, 403, "cross_origin", "request from another site refused")
            return
        if policy.token is None:
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"").decode("latin-1")
        params = parse_qsl(query, keep_blank_values=True)
        from_query = next((v for k, v in params if k == "token"), None)
        if from_query is not None and scope["method"] == "GET" and policy.token_ok(from_query):
            # First visit from the kiosk URL: keep the token in a cookie, drop it from the address bar.
            rest = urlencode([(k, v) for k, v in params if k != "token"])
            location = quote(scope["path"]) + (f"?{rest}" if rest else "")  # a header is latin-1; a path may not be
            secure = "; Secure" if scope.get("scheme") == "https" else ""
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [
                        (b"location", location.encode("latin-1")),
                        (b"cache-control", b"no-store"),
                        (b"set-cookie", f"{TOKEN_COOKIE}={policy.token}; Path=/; HttpOnly; SameSite=Strict{secure}".encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        supplied = _cookie(headers.get("cookie", ""), TOKEN_COOKIE)
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            supplied = auth[7:].strip()
        if not policy.token_ok(supplied):
            await self._refuse(send, 401, "no_token", "this page needs the station's token (stationctl operator-url)")
            return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, status: int, reason: str, message: str) -> None:
        self.policy.refused[reason] = self.policy.refused.get(reason, 0) + 1
        self.failures.report(reason)
        body = json.dumps({"ok": False, "reason": reason, "error": message}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None
