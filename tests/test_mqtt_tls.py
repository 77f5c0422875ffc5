"""TLS (server verified against a CA file, client certificate) and password settings from the
config, against a real mosquitto TLS listener with certificates made by openssl for this test."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from station.config import StationConfig
from station.link.sync import publisher_from_config, read_password
from tests.support.broker import Broker, mosquitto_available
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not mosquitto_available() or shutil.which("openssl") is None, reason="mosquitto or openssl not installed")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A CA, a server certificate for IP 127.0.0.1 and a client certificate, all signed by the CA."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca", cwd=d
    )
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=d,
        )


def test_mutual_tls_and_password_file_from_config(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    broker = Broker(
        tmp_path / "broker",
        allow_anonymous=False,
        users={"st-01": "tls-s3cret"},
        listener_options=[
            f"cafile {pki / 'ca.pem'}",
            f"certfile {pki / 'server.pem'}",
            f"keyfile {pki / 'server.key'}",
            "require_certificate true",
        ],
    )
    broker.start()
    (tmp_path / "mqtt-password").write_text("tls-s3cret\n")
    cfg = StationConfig()
    cfg.station.site, cfg.station.id = "gate-a", "st-01"
    cfg.mqtt.url = f"mqtts://127.0.0.1:{broker.port}"
    cfg.mqtt.username = "st-01"
    cfg.mqtt.password_file = str(tmp_path / "mqtt-password")
    cfg.mqtt.tls_ca_file = str(pki / "ca.pem")
    cfg.mqtt.tls_cert_file = str(pki / "client.pem")
    cfg.mqtt.tls_key_file = str(pki / "client.key")
    caplog.set_level(logging.DEBUG)
    publisher = publisher_from_config(cfg, session=1)
    publisher.start()
    try:
        wait_until(publisher.connected, 10, "connected over mutual TLS")
        assert publisher.publish_direct("checkpoint/v1/gate-a/st-01/state/test", b"{}")
    finally:
        publisher.stop()
    assert "tls-s3cret" not in caplog.text, "the password is never logged"

    # Without the client certificate the broker refuses the handshake: no connection, retried.
    cfg.mqtt.tls_key_file = ""  # the key first: a key without its certificate is a config error
    cfg.mqtt.tls_cert_file = ""
    no_cert = publisher_from_config(cfg, session=1)
    no_cert.start()
    try:
        wait_until(lambda: no_cert.last_error is not None, 10, "the refused handshake")
        assert not no_cert.connected() and no_cert.state in ("connecting", "reconnecting")
        assert no_cert.last_error is not None
    finally:
        no_cert.stop()
        broker.kill()


def test_password_comes_from_the_named_environment_variable_or_the_file(tmp_path: Path) -> None:
    cfg = StationConfig()
    cfg.mqtt.password_env = "MY_BROKER_PW"
    assert read_password(cfg.mqtt, env={"MY_BROKER_PW": "from-env"}) == "from-env"
    assert read_password(cfg.mqtt, env={}) is None
    (tmp_path / "pw").write_text("from-file\nsecond line ignored\n")
    cfg.mqtt.password_file = str(tmp_path / "pw")
    assert read_password(cfg.mqtt, env={"MY_BROKER_PW": "from-env"}) == "from-file"
