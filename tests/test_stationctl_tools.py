"""stationctl's technician commands without a daemon: config diff/edit, doctor, devices, test, logs,
bugreport. Real parts throughout: a real mosquitto for the broker check, the thermal emulator's pty,
a video file as camera, gpiozero's MockFactory under the real gate driver, the real ONNX face model,
a real QR image through the configured reader.
"""

from __future__ import annotations

import json
import socket
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from station.cli.bugreport_cmd import REDACTED, redact_line, redact_toml
from station.cli.doctor_cmd import list_cameras
from station.cli.stationctl import main as stationctl
from tests.support.broker import free_port, mosquitto_available, mosquitto_broker

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, input: str | None = None, env: dict[str, str] | None = None):
    return CliRunner().invoke(stationctl, list(args), input=input, env=env)


def write_cfg(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "station.toml"
    cfg.write_text(
        "# site config\n"
        "[station]\n"
        'site = "gate-a"\n'
        'id = "st-01"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        "\n"
        "[screening]\n"
        "fever_threshold_c = 37.5  # ministry notice 12\n"
        "\n"
        "[gate]\n"
        'pin_factory = "mock"\n'
        "open_s = 0.3\n" + extra
    )
    return cfg


# -- config diff / edit ----------------------------------------------------------------------------


def test_config_diff_names_file_line_and_environment(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path)
    r = cli("--config", str(cfg), "config", "diff", "--json", env={"CHECKPOINT_MQTT__KEEPALIVE_S": "45"})
    assert r.exit_code == 0, r.output
    diffs = {d["key"]: d for d in json.loads(r.stdout)}
    assert diffs["screening.fever_threshold_c"] == {
        "key": "screening.fever_threshold_c",
        "value": 37.5,
        "default": 37.3,
        "where": "station.toml:8",
    }
    assert diffs["station.site"]["where"] == "station.toml:3"
    assert diffs["mqtt.keepalive_s"]["where"] == "env CHECKPOINT_MQTT__KEEPALIVE_S"
    assert "station.lane" not in diffs  # at its default
    r = cli("--config", str(cfg), "config", "diff")
    assert "station.toml:8: screening.fever_threshold_c = 37.5  (default 37.3)" in r.stdout


def test_config_edit_installs_a_valid_edit_with_comments_and_refuses_an_invalid_one(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path)
    before = cfg.read_text()
    good = f"{sys.executable} -c \"import sys,pathlib; p=pathlib.Path(sys.argv[1]); p.write_text(p.read_text().replace('37.5', '37.6'))\""
    r = cli("--config", str(cfg), "config", "edit", "--editor", good)
    assert r.exit_code == 0, r.output
    assert cfg.read_text() == before.replace("37.5", "37.6")
    assert "# ministry notice 12" in cfg.read_text()
    assert (tmp_path / "station.toml.bak").read_text() == before

    bad = f"{sys.executable} -c \"import sys,pathlib; p=pathlib.Path(sys.argv[1]); p.write_text(p.read_text().replace('37.6', '45'))\""
    r = cli("--config", str(cfg), "config", "edit", "--editor", bad)
    assert r.exit_code == 1
    assert "fever_threshold_c" in r.output and "abandoned" in r.output
    assert "37.6" in cfg.read_text()  # unchanged

    noop = f'{sys.executable} -c "pass"'
    r = cli("--config", str(cfg), "config", "edit", "--editor", noop)
    assert r.exit_code == 0 and "no changes" in r.output


# -- doctor ------------------------------------------------------------------------------------------


def checks_of(r) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(r.stdout)["checks"]}


@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
def test_doctor_verdicts_fixes_and_exit_codes(tmp_path: Path, emulator) -> None:
    with mosquitto_broker(tmp_path / "broker") as broker:
        cfg = write_cfg(tmp_path, f'\n[thermal]\nport = "{emulator.port}"\n\n[mqtt]\nurl = "{broker.url}"\n')
        r = cli("--config", str(cfg), "doctor", "--json")
        checks = checks_of(r)
        assert checks["broker"]["level"] == "ok"
        assert checks["config"]["level"] == "ok"
        assert checks["models"]["level"] == "ok"  # the shipped models match their manifest sha256
        assert checks["thermal port"]["level"] in ("ok", "warn")  # a pty: present, not a by-id name
        assert checks["daemon"]["level"] == "warn" and checks["daemon"]["fix"]
        assert r.exit_code == json.loads(r.stdout)["exit_code"] in (1, 2)

    # Broker gone, thermal module unplugged, camera missing: failures, each with its fix, exit 2.
    port = free_port()
    cfg = write_cfg(
        tmp_path,
        f'\n[thermal]\nport = "{tmp_path}/ttyUSB9"\n\n[camera]\ndevice = "{tmp_path}/video9"\n\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n',
    )
    r = cli("--config", str(cfg), "doctor", "--json", "--broker-timeout", "1")
    assert r.exit_code == 2
    checks = checks_of(r)
    for name in ("broker", "thermal port", "camera"):
        assert checks[name]["level"] == "fail" and checks[name]["fix"], checks[name]
    assert "stationctl devices list" in checks["thermal port"]["fix"]
    r = cli("--config", str(cfg), "doctor", "--broker-timeout", "1")
    assert "[FAIL] broker" in r.stdout and "fix:" in r.stdout

    # An invalid config file is a failure naming the line.
    cfg.write_text('[screening]\nfever_threshold_c = "high"\n')
    checks = checks_of(cli("--config", str(cfg), "doctor", "--json"))
    assert checks["config"]["level"] == "fail" and "station.toml:2" in checks["config"]["detail"]


def test_doctor_models_failure_on_a_tampered_model(tmp_path: Path) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(ROOT / "station" / "models_data", models)
    victim = next(p for p in models.rglob("*.onnx"))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    cfg = write_cfg(tmp_path, f'\n[detector]\nmodels_dir = "{models}"\n')
    r = cli("--config", str(cfg), "doctor", "--json")
    checks = checks_of(r)
    assert r.exit_code == 2
    assert checks["models"]["level"] == "fail" and "sha256" in checks["models"]["detail"]
    assert "models install" in checks["models"]["fix"]


# -- devices ------------------------------------------------------------------------------------------


def test_cameras_are_listed_with_sysfs_names_and_by_id_links(tmp_path: Path) -> None:
    dev, sys_root = tmp_path / "dev", tmp_path / "sys"
    (dev / "v4l" / "by-id").mkdir(parents=True)
    for n, name in ((0, "USB2.0 HD UVC WebCam"), (1, "USB2.0 HD UVC WebCam: metadata"), (10, "bcm2835-isp")):
        (dev / f"video{n}").write_text("")
        (sys_root / "class" / "video4linux" / f"video{n}").mkdir(parents=True)
        (sys_root / "class" / "video4linux" / f"video{n}" / "name").write_text(name + "\n")
    (dev / "v4l" / "by-id" / "usb-Sonix_USB2.0_HD_UVC_WebCam-video-index0").symlink_to(dev / "video0")
    cams = list_cameras(dev, sys_root)
    assert [c["device"] for c in cams] == [str(dev / "video0"), str(dev / "video1"), str(dev / "video10")]
    assert cams[0]["name"] == "USB2.0 HD UVC WebCam"
    assert cams[0]["by_id"] == [str(dev / "v4l" / "by-id" / "usb-Sonix_USB2.0_HD_UVC_WebCam-video-index0")]
    assert cams[1]["by_id"] == []


def test_devices_list_json_shape() -> None:
    r = cli("devices", "list", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data) == {"serial", "cameras"}
    for p in data["serial"]:
        assert {"device", "by_id", "vid_pid", "description"} <= set(p)


# -- test … ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gate_tests_drive_the_real_driver_on_mock_pins(tmp_path: Path) -> None:
    cfg = write_cfg(tmp_path)
    for name, outputs in (("relay", {"relay", "green"}), ("buzzer", {"buzzer"}), ("lights", {"red", "amber"})):
        r = cli("--config", str(cfg), "test", name, "--json")
        assert r.exit_code == 0, r.output
        result = json.loads(r.stdout.splitlines()[-1])
        assert result["ok"] is True and result["pin_factory"] == "mock"
        switched_on = {out for _t, out, v in result["history"] if v}
        assert switched_on >= outputs
        if name != "relay":
            assert "relay" not in switched_on  # only the relay test may release the barrier
        relay = [v for _t, out, v in result["history"] if out == "relay"]
        assert not relay or relay[-1] is False  # every test ends with the barrier closed


def test_gate_test_fails_on_a_pin_it_cannot_claim(tmp_path: Path) -> None:
    # pin_factory "default" on a machine without GPIO: the driver cannot open the pins → FAIL, exit 1.
    cfg = write_cfg(tmp_path).read_text().replace('pin_factory = "mock"', 'pin_factory = "default"')
    (tmp_path / "station.toml").write_text(cfg)
    r = cli("--config", str(tmp_path / "station.toml"), "test", "relay", "--json", env={"GPIOZERO_PIN_FACTORY": "lgpio"})
    if r.exit_code == 0:
        pytest.skip("this machine has real GPIO")
    assert r.exit_code == 1 and json.loads(r.stdout)["ok"] is False


@pytest.mark.slow
def test_thermal_camera_qr_and_detector(tmp_path: Path, emulator, video: Path) -> None:
    cfg = write_cfg(tmp_path, f'\n[thermal]\nport = "{emulator.port}"\nrefresh_hz = 8\n\n[camera]\ndevice = "{video}"\n')
    r = cli("--config", str(cfg), "test", "thermal", "--frames", "2", "--json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.stdout)
    assert len(t["frames"]) == 2 and t["frames"][0]["shape"] == [24, 32]
    assert 21.0 < t["frames"][0]["mean_c"] < 23.0  # the emulated empty 22 °C room

    shot = tmp_path / "frame.jpg"
    r = cli("--config", str(cfg), "test", "camera", "--save", str(shot), "--json")
    assert r.exit_code == 0, r.output
    c = json.loads(r.stdout)
    assert (c["width"], c["height"]) == (640, 480) and shot.stat().st_size > 0

    r = cli("--config", str(cfg), "test", "qr", "--json")
    assert r.exit_code == 0, r.output
    q = json.loads(r.stdout)
    assert q["decoded"] == [q["payload"]]

    r = cli("--config", str(cfg), "test", "detector", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["state"] == "ok" and len(d["faces"]) == 1

    # No module on the port: the thermal test fails instead of hanging.
    bad = write_cfg(tmp_path, f'\n[thermal]\nport = "{tmp_path}/ttyUSB9"\n')
    r = cli("--config", str(bad), "test", "thermal", "--frames", "1", "--timeout", "1", "--json")
    assert r.exit_code == 1 and json.loads(r.stdout)["ok"] is False


# -- logs / bugreport ------------------------------------------------------------------------------------


def test_logs_from_the_log_file_with_since_and_lines(tmp_path: Path) -> None:
    log = tmp_path / "station.log"
    log.write_text(
        "2026-11-20 08:00:00,001 INFO station.app store open\n"
        "2026-11-24 09:00:00,001 ERROR station.app something broke\n"
        "Traceback (most recent call last):\n"
        "2026-11-24 09:00:01,001 INFO station.app station ready\n"
    )
    cfg = write_cfg(tmp_path, f'\n[logging]\nfile = "{log}"\n')
    r = cli("--config", str(cfg), "logs", "--source", "file", "-n", "2")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == ["Traceback (most recent call last):", "2026-11-24 09:00:01,001 INFO station.app station ready"]
    r = cli("--config", str(cfg), "logs", "--source", "file", "--since", "2026-11-23")
    assert r.stdout.splitlines()[0] == "2026-11-24 09:00:00,001 ERROR station.app something broke"
    assert len(r.stdout.splitlines()) == 3
    r = cli("--config", str(write_cfg(tmp_path)), "logs", "--source", "file")
    assert r.exit_code == 1 and "logging.file" in r.output


def test_redaction_covers_names_and_shapes_not_gate_pins() -> None:
    text = (
        "[ui]\n"
        'operator_pin_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"  # PIN 4711\n'
        'pin = "4711"\n'
        'api_key = "k-123"\n'
        'note = "$2b$12$abcdefghijklmnopqrstuv"\n'
        "[mqtt]\n"
        'url = "mqtt://alice:hunter2@broker.example:1883"\n'
        'password_env = "CHECKPOINT_MQTT_PASSWORD"\n'
        'tls_key_file = "/etc/checkpoint/client.key"\n'
        "[gate]\n"
        "relay_pin = 17\n"
    )
    out = redact_toml(text)
    for secret in ("$argon2id", '4711"', "k-123", "$2b$12", "hunter2"):
        assert secret not in out, secret
    assert out.count(REDACTED) == 5
    assert "relay_pin = 17" in out and 'tls_key_file = "/etc/checkpoint/client.key"' in out
    # A password holding "@" and ":" is masked whole (the user information runs to the last "@").
    line = redact_line("2026-11-24 INFO station.link.sync connecting url=mqtt://bob:p@ss:w0rd@broker:1883")
    assert line == f"2026-11-24 INFO station.link.sync connecting url=mqtt://bob:{REDACTED}@broker:1883", line
    assert "CHECKPOINT_MQTT_PASSWORD" in out and "alice" in out
    assert "# PIN 4711" in out  # comments are kept (plain words are not a secret shape)


def test_bugreport_archive_has_everything_and_no_secrets(tmp_path: Path) -> None:
    secret_pw = "pw-Zq81-never-in-archives"
    key_pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC-secret-key-material\n-----END PRIVATE KEY-----\n"
    pin_hash = "pbkdf2_sha256$200000$" + "5a17" * 8 + "$" + "c0ffee42" * 8  # the operator PIN's hash
    (tmp_path / "mqtt.pw").write_text(secret_pw + "\n")
    (tmp_path / "client.key").write_text(key_pem)
    (tmp_path / "client.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    log = tmp_path / "station.log"
    log.write_text(f"2026-11-24 09:00:00,001 INFO station.link.sync connecting url=mqtt://bob:{secret_pw}@broker:1883\n")
    cfg = write_cfg(
        tmp_path,
        (
            f'\n[mqtt]\nusername = "bob"\npassword_file = "{tmp_path / "mqtt.pw"}"\n'
            f'tls_cert_file = "{tmp_path / "client.crt"}"\ntls_key_file = "{tmp_path / "client.key"}"\n'
            f'\n[logging]\nfile = "{log}"\n'
            f'\n[http]\npin_hash = "{pin_hash}"\n'
        ),
    )
    out = tmp_path / "report.tar.gz"
    r = cli(
        "--config",
        str(cfg),
        "bugreport",
        "--out",
        str(out),
        env={"CHECKPOINT_MQTT_PASSWORD": secret_pw, "CHECKPOINT_MQTT__KEEPALIVE_S": "40"},
    )
    assert r.exit_code == 0, r.output
    with tarfile.open(out) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
        blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers())
    assert names >= {
        "config/station.toml",
        "config/effective.json",
        "config/environment.json",
        "versions.json",
        "logs.txt",
        "daemon.json",
        "doctor.json",
        "outbox.json",
        "MANIFEST.txt",
    }
    assert secret_pw.encode() not in blob
    assert b"c0ffee42" not in blob and b"5a175a17" not in blob
    assert b"secret-key-material" not in blob and b"BEGIN PRIVATE KEY" not in blob
    text = blob.decode()
    assert "# ministry notice 12" in text  # the config file as written, comments kept
    assert '"CHECKPOINT_MQTT_PASSWORD": "<redacted>"' in text
    assert "station.link.sync connecting url=mqtt://bob:<redacted>@broker:1883" in text
    with tarfile.open(out) as tar:
        versions = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("versions.json"))).read())
        doctor = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("doctor.json"))).read())
    assert versions["packages"]["click"] and versions["python"].startswith(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert {c["name"] for c in doctor["checks"]} >= {"config", "models", "broker", "disk"}
    assert oct(out.stat().st_mode & 0o777) == "0o640"


def test_help_imports_no_camera_model_or_gpio_code() -> None:
    import subprocess

    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom station.cli.stationctl import main\n"
        "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0\n"
        "print(sorted(m for m in ('cv2', 'onnxruntime', 'numpy', 'pyzbar', 'gpiozero', 'zxingcpp', 'serial') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_control_server_replaces_a_stale_socket_and_refuses_a_live_one(tmp_path: Path) -> None:
    from station.ops.control import ControlServer, request

    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # a killed daemon's socket: the file exists, nobody listens
    stale.close()
    server = ControlServer(path, {"echo": lambda req: req.get("x")})
    server.start()
    try:
        assert request(path, "echo", x=[1, "二"]) == [1, "二"]
        second = ControlServer(path, {})
        with pytest.raises(OSError, match="another daemon"):
            second.start()
        assert request(path, "echo", x=2) == 2  # the first one is unharmed
    finally:
        server.stop()
    assert not path.exists()
