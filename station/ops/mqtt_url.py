"""Read a broker URL: the one parser for ``mqtt://`` and ``mqtts://`` used by the station and the board.

``mqtt://[user[:password]@]host[:port][/]`` connects in plain TCP (default port 1883),
``mqtts://…`` with TLS (default port 8883). The host is a DNS name, an IPv4 address or a
bracketed IPv6 address (``mqtt://[fd00::1]:1883``). User name and password are percent-decoded
(``%40`` is ``@``); a password may also hold a bare ``@`` or ``:``, because the user information
runs to the last ``@`` of the authority, as :func:`urllib.parse.urlsplit` reads it.

The parser is total: any string gives an :class:`MqttEndpoint` or a :class:`ValueError` whose
message says what is wrong and never contains the password (it shows the URL through
:func:`station.ops.redact.redact_url`, or not at all where the password could not be told apart).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from station.ops.redact import MASK, redact_url

__all__ = ["DEFAULT_PORTS", "MAX_URL_LENGTH", "MqttEndpoint", "parse_mqtt_url"]

Scheme = Literal["mqtt", "mqtts"]

DEFAULT_PORTS: dict[Scheme, int] = {"mqtt": 1883, "mqtts": 8883}

MAX_URL_LENGTH = 2048
"""Longer input is refused before it is read: no broker address is this long, and the error
message that echoes a URL stays one readable line."""

# A DNS name or an IPv4 address; "_" because container and compose service names use it.
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?")
# Whitespace and control characters: urlsplit silently deletes tabs and newlines, and a redaction
# that stops at whitespace could not mask a password holding one.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class MqttEndpoint:
    """Where and how to reach a broker: the parsed form of a broker URL.

    ``host`` is bare (an IPv6 address without brackets); ``username`` and ``password`` are
    decoded, ``None`` when absent (an empty password counts as absent). The password is kept out
    of ``repr`` so that an endpoint in a log line or a traceback does not show it.
    """

    scheme: Scheme
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        """Return whether the connection uses TLS (``mqtts://``)."""
        return self.scheme == "mqtts"

    @property
    def address(self) -> str:
        """Return ``host:port`` as a technician types it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def with_credentials(self, username: str | None, password: str | None) -> MqttEndpoint:
        """Return this endpoint with explicitly configured credentials taking precedence.

        A ``None`` argument keeps what the URL carried, so ``username``/``password`` options of
        the clients override the URL's user information one field at a time, as they always did.
        """
        return replace(
            self,
            username=self.username if username is None else username,
            password=self.password if password is None else password,
        )

    def __str__(self) -> str:
        """Return the endpoint as a URL that is safe to log: the password is masked."""
        user = ""
        if self.username is not None:
            name = quote(self.username, safe="")
            user = f"{name}:{MASK}@" if self.password is not None else f"{name}@"
        return f"{self.scheme}://{user}{self.address}"


def parse_mqtt_url(url: str) -> MqttEndpoint:
    """Return the endpoint that ``url`` names, or raise ``ValueError`` saying why it names none.

    Accepts ``mqtt://`` and ``mqtts://`` (any letter case) with an optional ``/`` and nothing
    after it: a path, query or fragment has no meaning for MQTT and would otherwise be ignored
    without a word. The message never contains the password.
    """
    if not isinstance(url, str):
        raise ValueError(f"broker url must be text, not {type(url).__name__}")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"broker url is {len(url)} characters long; at most {MAX_URL_LENGTH}")
    if _UNSAFE.search(url):
        # Not echoed: a password holding a space would survive the redaction.
        raise ValueError("broker url contains whitespace or a control character (percent-encode it in a user name or password)")
    shown = _shown(url)
    head, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"broker url {shown!r}: expected mqtt://host[:port] or mqtts://host[:port]")
    if "@" in rest[_authority_end(rest) :]:
        # An "@" after the host part: "/", "?" or "#" in the user information ends the authority
        # early, so part of the password would be read as host, port or path.
        raise ValueError(f"broker url {shown!r}: '/', '?' or '#' in the user name or password must be percent-encoded (%2F, %3F, %23)")
    try:
        parts = urlsplit(url)
    except ValueError:  # unbalanced IPv6 brackets, or characters that NFKC-normalise to delimiters
        raise ValueError(
            f"broker url {shown!r}: not a URL "
            "(an IPv6 host needs valid [brackets]; percent-encode unusual characters in a user name or password)"
        ) from None
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker url {shown!r}: scheme must be mqtt:// or mqtts://")
    scheme: Scheme = "mqtts" if parts.scheme == "mqtts" else "mqtt"
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValueError(f"broker url {shown!r}: expected mqtt://host[:port] or mqtts://host[:port], with no path, query or fragment")
    host, port = _host_and_port(parts.netloc.rpartition("@")[2], DEFAULT_PORTS[scheme], shown)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if password is not None and username is None:
        raise ValueError(f"broker url {shown!r}: a password without a user name")
    return MqttEndpoint(scheme, host, port, username, password)


def _authority_end(after_scheme: str) -> int:
    """Return where the authority at the start of ``after_scheme`` ends (first ``/``, ``?`` or ``#``)."""
    ends = [i for i in (after_scheme.find(c) for c in "/?#") if i >= 0]
    return min(ends, default=len(after_scheme))


def _shown(url: str) -> str:
    """Return ``url`` as an error message may show it: without anything that could be the password.

    When every ``@`` lies in the authority of ``scheme://…`` the URL reads unambiguously and
    :func:`redact_url` masks the password (keeping the user name a technician recognises);
    otherwise everything before the last ``@`` is masked.
    """
    if "@" not in url:
        return url
    head, sep, rest = url.partition("://")
    if sep and _SCHEME.fullmatch(head) and "@" not in rest[_authority_end(rest) :]:
        return redact_url(url)
    return f"{head}://{MASK}@{url.rpartition('@')[2]}" if sep and _SCHEME.fullmatch(head) else f"{MASK}@{url.rpartition('@')[2]}"


def _host_and_port(hostport: str, default_port: int, shown: str) -> tuple[str, int]:
    """Return the bare host and the port of ``host[:port]`` (IPv6 in brackets), or raise ``ValueError``."""
    if hostport.startswith("["):
        inside, bracket, rest = hostport[1:].partition("]")
        if not bracket:
            raise ValueError(f"broker url {shown!r}: unclosed '[' around an IPv6 host")
        if rest and not rest.startswith(":"):
            raise ValueError(f"broker url {shown!r}: {rest!r} after the IPv6 host; expected ']:port'")
        try:
            # RFC 6874 writes an IPv6 zone as %25 ("[fe80::1%25eth0]").
            host = str(ipaddress.IPv6Address(unquote(inside)))
        except ValueError:
            raise ValueError(f"broker url {shown!r}: {inside!r} is not an IPv6 address") from None
        port_text = rest[1:]
    else:
        host, _colon, port_text = hostport.partition(":")
        if not host:
            raise ValueError(f"broker url {shown!r}: no host; expected mqtt://host[:port] or mqtts://host[:port]")
        if not _HOST_NAME.fullmatch(host):
            raise ValueError(f"broker url {shown!r}: {host!r} is not a host name or address")
        host = host.lower()
    if not port_text:
        return host, default_port
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"broker url {shown!r}: port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)
