"""No credentials in any log or error line: the one URL redaction rule, and every place that shows a
broker URL (config validation, the daemon, stationctl doctor / config / outbox, station demo, the
publisher and the board's subscriber) run on a config whose URL carries a password."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from station.cli.station_main import main as station_main
from station.cli.stationctl import main as stationctl
from station.config import ConfigError, MqttSection, load_config, validate_text
from station.ops.redact import MASK, error_text, has_userinfo, redact_url

SECRET = "s3cret"
BAD_URL = f"mqtt://u:{SECRET}@127.0.0.1:1"

# What urlsplit accepts as one authority: user without ":@/?#" or whitespace, password without "/?#"
# or whitespace (it may hold ":" and "@"), a host name.
_user = st.text(
    st.characters(codec="utf-8", exclude_characters=":@/?#", exclude_categories=("Zs", "Zl", "Zp", "Cc", "Cs")), min_size=1, max_size=12
)
_password = st.text(
    st.characters(codec="utf-8", exclude_characters="/?#", exclude_categories=("Zs", "Zl", "Zp", "Cc", "Cs")), min_size=1, max_size=24
)
_host = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True)


@given(
    scheme=st.sampled_from(["mqtt", "mqtts", "https", "ws"]),
    user=_user,
    password=_password,
    host=_host,
    port=st.integers(1, 65535),
    tail=st.sampled_from(["", "/", "/path?q=1", "#f"]),
)
def test_the_password_is_masked_and_everything_else_is_kept(scheme: str, user: str, password: str, host: str, port: int, tail: str) -> None:
    url = f"{scheme}://{user}:{password}@{host}:{port}{tail}"
    assert redact_url(url) == f"{scheme}://{user}:{MASK}@{host}:{port}{tail}"
    assert redact_url(f"connecting url={url} now") == f"connecting url={scheme}://{user}:{MASK}@{host}:{port}{tail} now"
    assert has_userinfo(url)


def test_urls_without_a_password_are_left_alone() -> None:
    for text in ("mqtt://broker:1883", "mqtts://broker", "mail me at a@b.example", "", "mqtt://"):
        assert redact_url(text) == text
    assert redact_url("mqtt://alice@broker:1883") == "mqtt://alice@broker:1883"  # a user name is no secret
    assert has_userinfo("mqtt://alice@broker") and not has_userinfo("mqtt://broker:1883")
    # Two URLs in one line, the second password holding "@": both masked, hosts kept.
    line = "a=mqtt://x:p1@h1:1 b=mqtts://y:p@2@h2/"
    assert redact_url(line) == f"a=mqtt://x:{MASK}@h1:1 b=mqtts://y:{MASK}@h2/"


def test_config_refuses_credentials_in_the_url_and_never_echoes_them(tmp_path: Path) -> None:
    problems = validate_text(f'[mqtt]\nurl = "{BAD_URL}"\n')
    assert len(problems) == 1 and problems[0].key == "mqtt.url"
    text = str(problems[0])
    assert SECRET not in text and "mqtt://u:***@127.0.0.1:1" in text
    assert "mqtt.username" in text and "mqtt.password_file" in text
    # The same from the environment, and a URL that also breaks the pattern (a path).
    with pytest.raises(ConfigError) as err:
        load_config(None, env={"CHECKPOINT_MQTT__URL": f"mqtts://u:{SECRET}@h:8883/x"})
    assert SECRET not in str(err.value) and "env CHECKPOINT_MQTT__URL" in str(err.value)
    # A model-level problem reports the whole section: its URL is masked too.
    problems = validate_text(f'[mqtt]\nurl = "{BAD_URL}"\ntls_key_file = "/k"\n')
    assert problems and all(SECRET not in str(p) for p in problems)
    # pydantic's own text repeats the input; error_text does not.
    with pytest.raises(ValueError) as verr:
        MqttSection.model_validate({"url": BAD_URL})
    assert SECRET in str(verr.value)  # why error_text exists
    assert SECRET not in error_text(verr.value) and "mqtt.username" in error_text(verr.value)


def _cfg(tmp_path: Path) -> Path:
    cfg = tmp_path / "station.toml"
    cfg.write_text(f'[station]\ndata_dir = "{tmp_path / "data"}"\n\n[mqtt]\nurl = "{BAD_URL}"\n')
    return cfg


def test_daemon_doctor_and_stationctl_never_print_the_password(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    daemon = subprocess.run(
        [sys.executable, "-m", "station.cli.station_main", "run", "--config", str(cfg)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert daemon.returncode == 2, daemon.stderr
    assert "mqtt.url" in daemon.stderr and SECRET not in daemon.stdout + daemon.stderr

    runner = CliRunner()
    outputs = []
    for args in (
        ["doctor", "--json", "--broker-timeout", "0.2"],
        ["doctor", "--broker-timeout", "0.2"],
        ["config", "validate"],
        ["config", "validate", "--json"],
        ["config", "show"],
        ["status"],
        ["outbox", "flush", "--timeout", "1"],
    ):
        r = runner.invoke(stationctl, ["--config", str(cfg), *args])
        outputs.append((args, r.output + (r.stderr if r.stderr_bytes is not None else "")))
        assert SECRET not in outputs[-1][1], args
    doctor = json.loads(outputs[0][1])
    config_check = next(c for c in doctor["checks"] if c["name"] == "config")
    assert config_check["level"] == "fail" and "mqtt://u:***@127.0.0.1:1" in config_check["detail"]

    # Putting it there by hand is refused, also without echoing it.
    good = tmp_path / "good.toml"
    good.write_text(f'[station]\ndata_dir = "{tmp_path / "data"}"\n\n[mqtt]\n')
    good_text = good.read_text()
    from station.app import DB_NAME
    from station.store.events import SqliteEventStore

    SqliteEventStore(tmp_path / "data" / DB_NAME, station_id="lane-1", site="demo-site").close()  # flush needs a store
    r = runner.invoke(stationctl, ["--config", str(good), "config", "set", "mqtt.url", BAD_URL])
    assert r.exit_code == 1 and SECRET not in r.output and "mqtt.password_file" in r.output
    assert good.read_text() == good_text
    # Command-line URLs of the helper tools.
    r = runner.invoke(stationctl, ["--config", str(good), "outbox", "flush", "--mqtt", BAD_URL, "--timeout", "1"])
    assert r.exit_code == 2 and SECRET not in r.output and "u:***@" in r.output
    r = runner.invoke(station_main, ["demo", "--people", "1", "--data-dir", str(tmp_path / "demo"), "--mqtt", BAD_URL])
    assert r.exit_code == 2 and SECRET not in r.output and "u:***@" in r.output


def test_broker_clients_do_not_put_the_password_in_their_errors() -> None:
    from drivers.publish.mqtt import MqttPublisher
    from station.board.mqtt import BoardSubscriber

    with pytest.raises(ValueError) as err:
        MqttPublisher(f"ftp://u:{SECRET}@h:1", "c", "t/status", b"off", b"on")
    assert SECRET not in str(err.value) and "u:***@h" in str(err.value)
    with pytest.raises(ValueError) as err:
        BoardSubscriber(f"ftp://u:{SECRET}@h:1", lambda t, p: None)
    assert SECRET not in str(err.value) and "u:***@h" in str(err.value)
