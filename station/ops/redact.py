"""Credential redaction for anything that reaches a log line, an error message or a report.

One rule, used everywhere a URL is shown: the password part of ``scheme://user:password@host``
becomes ``***`` (``mqtt://user:***@host:1883``); the user name stays, it is what a technician
needs to recognise the account. A password may itself contain ``@`` or ``:``, so the user
information runs to the *last* ``@`` of the authority (as ``urllib.parse.urlsplit`` reads it).
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://  then the authority's user information up to its last "@" (greedy, but never past
# the end of the authority: "/", "?", "#" or whitespace).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@")


def redact_url(text: str, mask: str = MASK) -> str:
    """Return ``text`` with the password of every ``scheme://user:password@`` in it replaced by ``mask``."""

    def masked(match: re.Match[str]) -> str:
        user, sep, _password = match.group("userinfo").partition(":")
        return f"{match.group('scheme')}{user}{':' + mask if sep else ''}@"

    return _USERINFO.sub(masked, text)


def has_userinfo(url: str) -> bool:
    """Return whether ``url`` carries a user name or password (``scheme://user[:password]@host``)."""
    return _USERINFO.search(url) is not None


def error_text(exc: BaseException) -> str:
    """Return ``exc`` as text for a user, with URL passwords masked and no echoed input values.

    A pydantic ``ValidationError``'s own text repeats the input (``input_value='mqtt://u:pw@…'``,
    cut at an arbitrary length where no mask can find the password), so only its messages are used.
    """
    errors = getattr(exc, "errors", None)
    messages: list[str] = []
    if callable(errors):
        try:
            messages = [str(e.get("msg", "")) for e in errors(include_url=False)]
        except Exception:  # noqa: BLE001  another kind of errors() method: fall back to str()
            messages = []
    return redact_url("; ".join(messages) if messages else str(exc))
