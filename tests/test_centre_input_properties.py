"""Hypothesis properties of two inputs the centre takes from outside: ``--smtp`` and a station's answer to ``resend``.

``parse_smtp`` reads an operator's option (and a password file): any text gets a server or a
``ValueError`` naming the option, never another exception, and what it accepts keeps its rules (no
login over plain SMTP, the password only from the file, never in the repr). ``answer_text`` puts a
station's JSON answer on the fleet page: any JSON gets a short plain text or None.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from station.centre.fleet import answer_text
from station.centre.notify import SmtpServer, parse_smtp

schemes = st.sampled_from(["", "smtp://", "smtp+starttls://", "smtps://", "SMTPS://", "http://", "smtp:/", "://"])
users = st.one_of(
    st.sampled_from(["", "%ff@", "a%40b@", "%@", ":x@"]),
    st.from_regex(r"[A-Za-z0-9%._:-]{1,12}@", fullmatch=True),
    st.text(max_size=8).map(lambda t: t + "@"),
)
hosts = st.one_of(
    st.sampled_from(["127.0.0.1", "mail.example.org", "[::1]", "[::1", "", "a b", "h/x", "主机"]),
    st.text(max_size=12),
)
ports = st.one_of(st.just(""), st.integers(-5, 70000).map(lambda p: f":{p}"), st.text(max_size=6).map(lambda t: ":" + t))
# A password marked so that finding it in a message means it leaked (a bare "0" is in any message).
passwords = st.one_of(st.none(), st.just(""), st.text(max_size=12).map(lambda t: "pw§" + t), st.just("correct-horse"))
ca_files = st.one_of(st.none(), st.just("/etc/ssl/ca.pem"))
pytestmark = pytest.mark.slow  # 1-3 s of examples each


@settings(max_examples=500, deadline=None)
@example(scheme="smtp+starttls://", user="%ff@", host="127.0.0.1", port=":587", tail="", password="pw§x", ca=None)  # not UTF-8
@example(scheme="smtps://", user="a%40b@", host="[::1]", port="", tail="/", password="correct-horse", ca="/etc/ssl/ca.pem")
@example(scheme="smtp://", user=":x@", host="mail.example.org", port=":25", tail="", password=None, ca=None)  # a URL password
@given(scheme=schemes, user=users, host=hosts, port=ports, tail=st.sampled_from(["", "/", "/x", "?a=1"]), password=passwords, ca=ca_files)
def test_any_smtp_option_gets_a_server_or_a_value_error_naming_it(
    scheme: str, user: str, host: str, port: str, tail: str, password: str | None, ca: str | None
) -> None:
    value = f"{scheme}{user}{host}{port}{tail}"
    try:
        server = parse_smtp(value, password=password, ca_file=ca)
    except ValueError as exc:
        assert str(exc).startswith(("--smtp ", "--smtp-password-file", "--smtp-ca"))
        if password:
            assert password not in str(exc)
        return
    assert isinstance(server, SmtpServer) and 0 < server.port < 65536 and server.host
    assert server.security in ("plain", "starttls", "tls")
    if server.username is not None:
        assert server.security != "plain" and server.password  # a login only over TLS, and only with the file's password
    if server.security == "plain":
        assert server.ca_file is None and server.password is None
    if password:
        assert password not in repr(server)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=200),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=40), inner, max_size=20),
    max_leaves=40,
)
answers = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "ok": json_values,
            "reason": json_values,
            "error": json_values,
            "result": st.dictionaries(st.text(max_size=40), st.one_of(st.integers(), st.booleans(), st.text(max_size=5)), max_size=20),
        },
    ),
)


@settings(max_examples=400, deadline=None)
@given(answer=answers)
def test_any_station_answer_becomes_short_plain_text_or_none(answer: Any) -> None:
    text = answer_text(answer)
    if not isinstance(answer, dict):
        assert text is None
        return
    assert isinstance(text, str) and 0 < len(text) <= 240
    assert text.split(" · ")[0] == ("ok" if answer.get("ok") is True else "refused")
