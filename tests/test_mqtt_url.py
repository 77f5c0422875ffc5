"""The one broker URL parser (station.ops.mqtt_url): what it reads, what it refuses and that no
refusal shows the password."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from station.ops.mqtt_url import MAX_URL_LENGTH, MqttEndpoint, parse_mqtt_url

SECRET = "Sx9-secret"


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port", "tls"),
    [
        ("mqtt://broker", "mqtt", "broker", 1883, False),
        ("mqtts://broker", "mqtts", "broker", 8883, True),
        ("mqtt://broker:1884", "mqtt", "broker", 1884, False),
        ("mqtts://broker.example:443/", "mqtts", "broker.example", 443, True),
        ("MQTTS://Broker.Example", "mqtts", "broker.example", 8883, True),
        ("mqtt://10.0.0.7:65535", "mqtt", "10.0.0.7", 65535, False),
        ("mqtt://broker:", "mqtt", "broker", 1883, False),  # an empty port is the default (RFC 3986)
        ("mqtt://mosquitto_1:1", "mqtt", "mosquitto_1", 1, False),
        ("mqtt://[::1]", "mqtt", "::1", 1883, False),
        ("mqtts://[FD00::0:1]:8884", "mqtts", "fd00::1", 8884, True),
        ("mqtt://[fe80::1%25eth0]:1883", "mqtt", "fe80::1%eth0", 1883, False),
    ],
)
def test_hosts_ports_and_schemes(url: str, scheme: str, host: str, port: int, tls: bool) -> None:
    ep = parse_mqtt_url(url)
    assert (ep.scheme, ep.host, ep.port, ep.tls) == (scheme, host, port, tls)
    assert ep.username is None and ep.password is None


def test_ipv6_address_is_bracketed_again_for_display() -> None:
    ep = parse_mqtt_url("mqtt://[::1]:1884")
    assert ep.address == "[::1]:1884" and str(ep) == "mqtt://[::1]:1884"
    assert parse_mqtt_url("mqtt://broker").address == "broker:1883"


def test_credentials_are_percent_decoded_and_a_password_may_hold_at_and_colon() -> None:
    ep = parse_mqtt_url("mqtt://bob:p@ss:w0rd@broker:1883")
    assert (ep.username, ep.password, ep.host) == ("bob", "p@ss:w0rd", "broker")
    ep = parse_mqtt_url(f"mqtts://{quote('lane 1@site', safe='')}:{quote('a/b?c#d %', safe='')}@broker")
    assert (ep.username, ep.password) == ("lane 1@site", "a/b?c#d %")
    ep = parse_mqtt_url("mqtt://alice@broker")
    assert (ep.username, ep.password) == ("alice", None)
    assert parse_mqtt_url("mqtt://alice:@broker").password is None  # empty password: none, as paho sends it


def test_explicit_credentials_override_the_url_one_field_at_a_time() -> None:
    ep = parse_mqtt_url("mqtt://alice:old@broker")
    assert ep.with_credentials(None, None) == ep
    assert (ep.with_credentials("bob", None).username, ep.with_credentials("bob", None).password) == ("bob", "old")
    assert ep.with_credentials(None, "new").password == "new"
    plain = parse_mqtt_url("mqtt://broker").with_credentials("lane-1", "pw")
    assert (plain.username, plain.password, plain.host) == ("lane-1", "pw", "broker")


def test_the_password_is_in_neither_repr_nor_str() -> None:
    ep = parse_mqtt_url(f"mqtts://alice:{SECRET}@broker:8883")
    assert ep.password == SECRET
    assert SECRET not in repr(ep) and SECRET not in str(ep)
    assert str(ep) == "mqtts://alice:***@broker:8883"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "expected mqtt://host"),
        ("broker:1883", "expected mqtt://host"),
        ("mqtt://", "no host"),
        ("mqtt://:1883", "no host"),
        ("mqtt://u:pw@", "no host"),
        ("mqtt://broker:0", "port '0'"),
        ("mqtt://broker:65536", "port '65536'"),
        ("mqtt://broker:http", "port 'http'"),
        ("mqtt://broker:1:2", "port '1:2'"),
        ("mqtt://broker:-1", "port '-1'"),
        ("mqtt://broker:\u0661\u0662", "port"),  # Arabic-Indic digits are not a port
        ("ftp://broker", "scheme must be mqtt:// or mqtts://"),
        ("https://broker:443", "scheme must be mqtt:// or mqtts://"),
        ("ws://broker", "scheme must be mqtt:// or mqtts://"),
        ("mqtt://broker/topic", "no path, query or fragment"),
        ("mqtt://broker?x=1", "no path, query or fragment"),
        ("mqtt://broker#f", "no path, query or fragment"),
        ("mqtt://[::1", "not a URL"),
        ("mqtt://[zz]:1883", "not a URL"),
        ("mqtt://[::1]x", "after the IPv6 host"),
        ("mqtt://bro ker", "whitespace or a control character"),
        ("mqtt://broker\n", "whitespace or a control character"),
        ("mqtt://bro%6Ber", "not a host name"),
        ("mqtt://bröker", "not a host name"),
        ("mqtt://" + "b" * MAX_URL_LENGTH, f"at most {MAX_URL_LENGTH}"),
        ("mqtt://:pw@broker", "a password without a user name"),
    ],
)
def test_refusals_say_why(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match="broker url") as err:
        parse_mqtt_url(url)
    assert reason in str(err.value)


def test_non_text_is_refused_with_a_value_error() -> None:
    with pytest.raises(ValueError, match="must be text"):
        parse_mqtt_url(b"mqtt://broker")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://u:{SECRET}@broker:1",  # unknown scheme
        f"mqtt://u:{SECRET}@broker:99999",  # bad port
        f"mqtt://u:{SECRET}@broker/path",  # path
        f"mqtt://u:{SECRET}@",  # no host
        f"mqtt://u:{SECRET}@[::1",  # unclosed bracket
        f"mqtt://u:{SECRET}@bad_host!",  # bad host
        f"mqtt://u:ab/{SECRET}@broker",  # "/" in the password ends the authority early
        f"mqtt://u:{SECRET}?x@broker",
        f"mqtt://u:{SECRET}#@broker",
        f"u:{SECRET}@broker:1883",  # no scheme at all
        f"@@://u:{SECRET}@broker",  # a scheme redact_url does not recognise
        f"mqtt://u:{SECRET} x@broker",  # whitespace
        f"mqtt://u:{SECRET}\u3000x@broker",  # Unicode whitespace, where a redaction would stop
        f"mqtt://u:{SECRET}\uff03@broker",  # a character that NFKC-normalises to "#"
        f"mqtt://:{SECRET}@broker",  # password without a user
    ],
)
def test_the_password_is_never_in_the_error(url: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_mqtt_url(url)
    assert SECRET not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__ in (True, False)


def test_the_user_name_is_kept_in_the_error_to_recognise_the_account() -> None:
    with pytest.raises(ValueError) as err:
        parse_mqtt_url(f"ftp://lane-7:{SECRET}@broker:1")
    assert "lane-7:***@broker" in str(err.value)


@pytest.mark.slow
@given(st.text(max_size=200))
def test_any_text_gives_an_endpoint_or_a_value_error(text: str) -> None:
    for url in (text, "mqtt://" + text, "mqtts://u:p@" + text):
        try:
            ep = parse_mqtt_url(url)
        except ValueError as exc:
            assert str(exc).startswith("broker url")
        else:
            assert isinstance(ep, MqttEndpoint) and 1 <= ep.port <= 65535 and ep.host


_password = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=20)


@given(before=_password, after=_password, rest=st.sampled_from(["@broker:1883", "@broker:0", "@", "@[::1", "@broker/x", "x@y/z@h"]))
def test_a_hostile_password_never_reaches_the_error(before: str, after: str, rest: str) -> None:
    password = before + SECRET + after
    for url in (f"mqtt://u:{password}{rest}", f"bogus://u:{password}{rest}", f"u:{password}{rest}"):
        try:
            parse_mqtt_url(url)
        except ValueError as exc:
            assert SECRET not in str(exc), url
