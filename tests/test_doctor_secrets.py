"""stationctl doctor warns about a broker password sent without TLS and about secret files (broker
password, private keys, whatever config key names them) that their group or others can read."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from station.cli.checks import check_broker_credentials, check_secret_files
from station.cli.stationctl import main as stationctl
from station.config import StationConfig

PASSWORD = "pw-Zq81"


def _cfg(url: str, **mqtt: str) -> StationConfig:
    cfg = StationConfig()
    cfg.mqtt.url = url
    for k, v in mqtt.items():
        setattr(cfg.mqtt, k, v)
    return cfg


def _password_file(tmp_path: Path, mode: int) -> Path:
    f = tmp_path / "mqtt.pw"
    f.write_text(PASSWORD + "\n")
    f.chmod(mode)
    return f


def test_a_password_over_plain_mqtt_is_a_warning_tls_or_no_password_is_not(tmp_path: Path) -> None:
    pw = str(_password_file(tmp_path, 0o600))
    plain = check_broker_credentials(_cfg("mqtt://broker:1883", username="gate-a/st-01", password_file=pw), env={})
    assert plain.level == "warn" and "without TLS" in plain.detail and "mqtts://" in plain.fix
    assert PASSWORD not in plain.detail + plain.fix
    from_env = check_broker_credentials(_cfg("mqtt://broker:1883", username="u"), env={"CHECKPOINT_MQTT_PASSWORD": PASSWORD})
    assert from_env.level == "warn" and "$CHECKPOINT_MQTT_PASSWORD" in from_env.detail and PASSWORD not in from_env.detail
    assert check_broker_credentials(_cfg("mqtts://broker:8883", username="u", password_file=pw), env={}).level == "ok"
    assert check_broker_credentials(_cfg("mqtt://broker:1883", username="u"), env={}).level == "ok"  # no password at all
    assert check_broker_credentials(_cfg("mqtt://broker:1883", password_file=pw), env={}).level == "ok"  # no user: not sent


def test_secret_files_readable_by_group_or_others_are_warnings(tmp_path: Path) -> None:
    pw = _password_file(tmp_path, 0o600)
    key = tmp_path / "client.key"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    cert = tmp_path / "client.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    cert.chmod(0o644)  # public: world-readable is fine
    cfg = _cfg("mqtts://broker:8883", username="u", password_file=str(pw), tls_cert_file=str(cert), tls_key_file=str(key))
    ok = check_secret_files(cfg)
    assert ok.level == "ok" and "2 secret file(s)" in ok.detail

    pw.chmod(0o640)
    loose = check_secret_files(cfg)
    assert loose.level == "warn" and str(pw) in loose.detail and "group" in loose.detail
    assert str(key) not in loose.detail and str(cert) not in loose.detail
    assert loose.fix == f"sudo chown checkpoint:checkpoint {pw} && sudo chmod 0600 {pw}"
    assert PASSWORD not in loose.detail + loose.fix

    pw.chmod(0o600)
    key.chmod(0o604)
    loose = check_secret_files(cfg)
    assert loose.level == "warn" and str(key) in loose.detail and "others" in loose.detail and str(pw) not in loose.detail

    # A private key under any *_file key counts by its content (e.g. a centre signing key another part adds);
    # a public key under a *_keys_file does not.
    key.chmod(0o600)
    signer = tmp_path / "signer.pem"
    signer.write_bytes(key.read_bytes())
    signer.chmod(0o644)
    cfg.codes.trust_list_signer_file = str(signer)
    assert str(signer) in check_secret_files(cfg).detail
    signer.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert check_secret_files(cfg).level == "ok"

    # A configured password file that is not there is worth a word too.
    pw.unlink()
    gone = check_secret_files(cfg)
    assert gone.level == "warn" and "does not exist" in gone.detail


def test_stationctl_doctor_reports_both(tmp_path: Path) -> None:
    pw = _password_file(tmp_path, 0o644)
    cfg = tmp_path / "station.toml"
    cfg.write_text(
        f'[station]\ndata_dir = "{tmp_path / "data"}"\n\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:1"\nusername = "gate-a/st-01"\npassword_file = "{pw}"\n'
    )
    r = CliRunner().invoke(stationctl, ["--config", str(cfg), "doctor", "--json", "--broker-timeout", "0.2"])
    assert r.exit_code in (1, 2), r.output  # the unreachable broker (and devices) may fail too
    checks = {c["name"]: c for c in json.loads(r.output)["checks"]}
    assert checks["broker credentials"]["level"] == "warn"
    assert checks["secret files"]["level"] == "warn" and str(pw) in checks["secret files"]["detail"]
    assert PASSWORD not in r.output


def test_doctor_says_when_no_centre_key_lets_a_command_in(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from station.cli.checks import check_command_keys

    cfg = _cfg("mqtts://broker:8883")
    none = check_command_keys(cfg, tmp_path)
    assert none.level == "warn" and "no_keys_configured" in none.detail

    cfg.centre.command_keys_file = str(tmp_path / "missing.pem")
    assert check_command_keys(cfg, tmp_path).level == "fail"

    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "centre.pub.pem").write_bytes(pem)
    cfg.centre.command_keys_file = str(tmp_path / "centre.pub.pem")
    ok = check_command_keys(cfg, tmp_path)
    assert ok.level == "ok" and "1 key(s) from configured" in ok.detail, ok
