"""The centre's e-mail over STARTTLS and implicit TLS with login (station/centre/notify.py ``SmtpServer``).

A real SMTP server (aiosmtpd) that requires STARTTLS and a login, or speaks TLS from the first byte,
with a certificate for 127.0.0.1 from a private CA made here; the client verifies it against
``--smtp-ca`` or the system's trust.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from click.testing import CliRunner

from station.centre.cli import centre as centre_cli
from station.centre.notify import SendError, SmtpServer, parse_smtp, send_email
from station.centre.run import Centre, CentreOptions
from tests.support.broker import free_port
from tests.support.pki import Pki, make_pki
from tests.support.postgres import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]
# the implicit-TLS server's own warning (see the implicit_tls fixture): its every byte is TLS
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")

USER = "alerts@example.org"
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA and a server certificate for the IP address 127.0.0.1 (subject alternative name)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


class Mailbox:
    """aiosmtpd's handler and authenticator: accepts only USER/PASSWORD, keeps each message with who logged in to send it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str | None, bool, email.message.EmailMessage]] = []  # (login, over TLS, message)
        self.logins: list[tuple[bytes, bool]] = []  # every login tried: (user, accepted)

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
        self.logins.append((auth_data.login if isinstance(auth_data, LoginPassword) else b"", ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        login = session.auth_data.login.decode() if session.authenticated else None
        self.messages.append((login, server.transport.get_extra_info("ssl_object") is not None, msg))
        return "250 OK"


def _server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    return context


@contextlib.contextmanager
def serving(**options: Any) -> Iterator[tuple[Mailbox, int]]:
    """Run an aiosmtpd server on a free port of 127.0.0.1 with ``options``; yield its mailbox and port."""
    box = Mailbox()
    port = free_port()
    if options.get("auth_required"):
        options["authenticator"] = box
    controller = Controller(box, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def starttls(pki: Pki) -> Iterator[tuple[Mailbox, int]]:
    """An SMTP server that refuses mail before STARTTLS and before a login."""
    with serving(tls_context=_server_context(pki), require_starttls=True, auth_required=True) as server:
        yield server


@pytest.fixture
def implicit_tls(pki: Pki) -> Iterator[tuple[Mailbox, int]]:
    """An SMTP server speaking TLS from the first byte (port 465 style) that refuses mail before a login."""
    # auth_require_tls=False: aiosmtpd 1.4 counts only STARTTLS as TLS and would not offer AUTH here (every byte is TLS already)
    with serving(ssl_context=_server_context(pki), auth_required=True, auth_require_tls=False) as server:
        yield server


@pytest.fixture
def cleartext() -> Iterator[tuple[Mailbox, int]]:
    """An SMTP server without STARTTLS (what a downgrading attacker would present)."""
    with serving() as server:
        yield server


def mail(server: SmtpServer) -> None:
    send_email(server, "centre@example.org", "门岗", "gate@example.org", "[checkpoint] Alarm: gate-a/st-01", "Alarm at gate-a/st-01\n")


# --- parsing ---------------------------------------------------------------------------------------


def test_every_accepted_form_of_smtp_is_parsed_with_its_default_port() -> None:
    assert parse_smtp("mail.example:25") == SmtpServer("mail.example", 25, "plain")
    assert parse_smtp("[::1]:2525") == SmtpServer("::1", 2525, "plain")
    assert parse_smtp("smtp://mail.example") == SmtpServer("mail.example", 25, "plain")
    assert parse_smtp("smtp://mail.example:2525/") == SmtpServer("mail.example", 2525, "plain")
    assert parse_smtp("smtp+starttls://mail.example") == SmtpServer("mail.example", 587, "starttls")
    assert parse_smtp("SMTPS://mail.example", ca_file="/etc/ca.pem") == SmtpServer("mail.example", 465, "tls", ca_file="/etc/ca.pem")
    assert parse_smtp("smtp+starttls://alerts%40example.org@[2001:db8::1]:2587", password="pw") == SmtpServer(
        "2001:db8::1", 2587, "starttls", "alerts@example.org", "pw"
    )
    assert parse_smtp("smtps://alerts@example.org@mail.example", password="pw") == SmtpServer(
        "mail.example", 465, "tls", "alerts@example.org", "pw"
    )  # the last @ ends the user name
    server = parse_smtp("smtps://u@mail.example", password="hunter2-secret")
    assert server.password == "hunter2-secret" and "hunter2-secret" not in repr(server)  # a logged option never shows it


@pytest.mark.parametrize(
    ("value", "kw", "expected"),
    [
        ("nohost", {}, r"--smtp 'nohost': expected HOST:PORT, smtp://HOST\[:PORT\], smtp\+starttls://\[USER@\]HOST\[:PORT\] or smtps://"),
        (":25", {}, "--smtp ':25': expected HOST:PORT"),
        ("h:0", {}, "--smtp 'h:0': expected HOST:PORT"),
        ("h:99999", {}, "--smtp 'h:99999': expected HOST:PORT"),
        ("h:x", {}, "--smtp 'h:x': expected HOST:PORT"),
        ("smtp://", {}, "--smtp 'smtp://': expected HOST:PORT"),
        ("smtp://h:0", {}, "--smtp 'smtp://h:0': expected"),
        ("smtp://h/path", {}, "--smtp 'smtp://h/path': expected"),
        ("smtp://h?x=1", {}, r"--smtp 'smtp://h\?x=1': expected"),
        ("ftp://h", {}, "--smtp 'ftp://h': expected HOST:PORT"),
        ("smtp://[::1", {}, r"--smtp 'smtp://\[::1': expected"),
        ("smtp://u@h", {"password": "pw"}, "--smtp 'smtp://u@h': a user name over plain SMTP would send its password in clear; use smtp"),
        ("u@h:25", {}, "--smtp 'u@h:25': a user name needs smtp\\+starttls://USER@HOST"),
        ("smtp+starttls://@h", {}, "--smtp 'smtp\\+starttls://@h': empty user name"),
        ("smtps://%ff@h", {"password": "pw"}, "percent-encoding is not UTF-8"),
        ("smtps://%C3%A9@h", {"password": "pw"}, "the user name must be printable ASCII"),
        ("smtps://h", {"password": "pw"}, "--smtp-password-file: --smtp 'smtps://h' names no user to log in as"),
        ("smtps://u@h", {}, "--smtp 'smtps://u@h': logging in as 'u' needs its password in --smtp-password-file"),
        ("smtps://u@h", {"password": "pässword"}, "--smtp-password-file: the password must be printable ASCII"),
        ("smtp://h", {"ca_file": "/etc/ca.pem"}, "--smtp-ca: --smtp 'smtp://h' is plain SMTP"),
        ("h:25", {"ca_file": "/etc/ca.pem"}, "--smtp-ca: --smtp 'h:25' is plain SMTP"),
    ],
)
def test_a_bad_smtp_is_refused_naming_the_option_the_value_and_what_is_allowed(value: str, kw: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        parse_smtp(value, **kw)


def test_a_password_in_the_url_is_refused_without_repeating_it() -> None:
    with pytest.raises(ValueError) as caught:
        parse_smtp("smtp+starttls://alerts:s3cret-pw@mail.example:587")
    text = str(caught.value)
    assert text.startswith("--smtp 'smtp+starttls://alerts:***@mail.example:587': no password in the URL")
    assert "--smtp-password-file" in text and "s3cret-pw" not in text


# --- against a real server -------------------------------------------------------------------------


def test_starttls_with_login_delivers_verified_against_the_private_ca(pki: Pki, starttls: tuple[Mailbox, int]) -> None:
    box, port = starttls
    mail(parse_smtp(f"smtp+starttls://alerts%40example.org@127.0.0.1:{port}", password=PASSWORD, ca_file=str(pki.ca)))
    assert [(login, tls, msg["To"]) for login, tls, msg in box.messages] == [(USER, True, "门岗 <gate@example.org>")]
    assert box.messages[0][2].get_content().splitlines() == ["Alarm at gate-a/st-01"]


def test_a_wrong_password_is_a_send_error_that_does_not_repeat_it(pki: Pki, starttls: tuple[Mailbox, int]) -> None:
    box, port = starttls
    wrong = "wrong-password-1234"
    with pytest.raises(SendError) as caught:
        mail(SmtpServer("127.0.0.1", port, "starttls", USER, wrong, str(pki.ca)))
    assert str(caught.value).startswith("smtp_SMTPAuthenticationError: (535")
    assert wrong not in str(caught.value)
    assert box.logins and set(box.logins) == {(USER.encode(), False)} and box.messages == []  # smtplib tries PLAIN, then LOGIN


def test_the_default_trust_refuses_a_server_of_a_private_ca_before_any_login(starttls: tuple[Mailbox, int]) -> None:
    box, port = starttls
    with pytest.raises(SendError, match=r"^smtp_SSLCertVerificationError: .*certificate verify failed"):
        mail(SmtpServer("127.0.0.1", port, "starttls", USER, PASSWORD))  # no ca_file: the system's trust
    assert box.logins == [] and box.messages == []  # the password never left


def test_the_host_name_is_checked_against_the_certificate(pki: Pki, implicit_tls: tuple[Mailbox, int]) -> None:
    box, port = implicit_tls
    with pytest.raises(SendError, match=r"^smtp_SSLCertVerificationError: .*(mismatch|doesn't match)"):
        mail(SmtpServer("localhost", port, "tls", USER, PASSWORD, str(pki.ca)))  # the certificate names 127.0.0.1 only
    assert box.logins == [] and box.messages == []


def test_starttls_never_falls_back_to_clear_text(pki: Pki, cleartext: tuple[Mailbox, int]) -> None:
    box, port = cleartext
    with pytest.raises(SendError, match="^smtp_SMTPNotSupportedError: STARTTLS extension not supported"):
        mail(SmtpServer("127.0.0.1", port, "starttls", USER, PASSWORD, str(pki.ca)))
    assert box.messages == []
    mail(parse_smtp(f"127.0.0.1:{port}"))  # the original HOST:PORT form still goes plain, without a login
    assert [(login, tls) for login, tls, _ in box.messages] == [(None, False)]


def test_implicit_tls_with_login_delivers(pki: Pki, implicit_tls: tuple[Mailbox, int]) -> None:
    box, port = implicit_tls
    mail(parse_smtp(f"smtps://{USER}@127.0.0.1:{port}", password=PASSWORD, ca_file=str(pki.ca)))
    assert [(login, tls) for login, tls, _ in box.messages] == [(USER, True)]


# --- the centre's options --------------------------------------------------------------------------


def test_the_centre_reads_the_password_file_and_the_ca_and_its_e_mail_arrives(
    pg_url: str, tmp_path: Path, pki: Pki, starttls: tuple[Mailbox, int]
) -> None:
    box, port = starttls
    key = tmp_path / "notify.key"
    key.write_text("a-webhook-secret-of-enough-length\n")
    password_file = tmp_path / "smtp.password"
    password_file.write_text(f"  {PASSWORD}  \nsecond line ignored\n")

    def options(**kw: Any) -> CentreOptions:
        return CentreOptions(mqtt_url="mqtt://127.0.0.1:1", db_url=pg_url, notify_secret_file=str(key), **kw)

    url = f"smtp+starttls://alerts%40example.org@127.0.0.1:{port}"
    centre = Centre(options(smtp=url, smtp_password_file=str(password_file), smtp_ca=str(pki.ca)))
    server = centre.notifier.opts.smtp
    assert server == SmtpServer("127.0.0.1", port, "starttls", USER, PASSWORD, str(pki.ca))
    mail(server)
    assert [login for login, _, _ in box.messages] == [USER]
    assert PASSWORD not in repr(centre.notifier.opts) and PASSWORD not in repr(centre.notifier.stats())

    with pytest.raises(ValueError, match=r"--smtp-password-file .*none: cannot read it \(No such file or directory\)"):
        Centre(options(smtp=url, smtp_password_file=str(tmp_path / "none")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="--smtp-password-file .*empty: the first line is empty"):
        Centre(options(smtp=url, smtp_password_file=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="--smtp-ca .*none.pem: not a readable PEM CA bundle"):
        Centre(options(smtp=url, smtp_password_file=str(password_file), smtp_ca=str(tmp_path / "none.pem")))
    with pytest.raises(ValueError, match="--smtp-ca .*smtp.password: not a readable PEM CA bundle"):
        Centre(options(smtp=url, smtp_password_file=str(password_file), smtp_ca=str(password_file)))
    with pytest.raises(ValueError, match="--smtp-password-file: needs --smtp"):
        Centre(options(smtp_password_file=str(password_file)))
    with pytest.raises(ValueError, match="--smtp-password-file: --smtp '127.0.0.1:25' names no user"):
        Centre(options(smtp="127.0.0.1:25", smtp_password_file=str(password_file)))


def test_the_command_line_shows_the_options_and_refuses_a_password_in_argv(pg_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    shown = runner.invoke(centre_cli, ["run", "--help"], terminal_width=200)
    assert shown.exit_code == 0
    for text in ("--smtp-password-file", "--smtp-ca", "smtp+starttls://[USER@]HOST[:PORT]", "smtps://[USER@]HOST[:PORT]"):
        assert text in shown.output
    base = ["run", "--mqtt", "mqtt://127.0.0.1:1", "--db", pg_url]
    alone = runner.invoke(centre_cli, [*base, "--smtp-ca", str(tmp_path / "ca.pem")])
    assert alone.exit_code == 2 and "--smtp-ca: needs --smtp" in alone.output
    key = tmp_path / "notify.key"
    key.write_text("a-webhook-secret-of-enough-length\n")
    argv = runner.invoke(centre_cli, [*base, "--notify-secret-file", str(key), "--smtp", "smtps://alerts:s3cret-pw@mail.example"])
    assert argv.exit_code == 2 and "no password in the URL" in argv.output and "--smtp-password-file" in argv.output
    assert "s3cret-pw" not in argv.output
