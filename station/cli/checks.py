"""The checks ``stationctl doctor`` runs (and ``stationctl bugreport`` includes): is this box fit to screen, what to fix.

Each check has with a verdict ``ok`` / ``warn`` / ``fail`` and, when not ok, a fix to type:
config validity, the thermal module's serial port (present, stable by-id name, permissions), the
camera, group membership of the service account and of the user running stationctl (dialout /
video / gpio), the model files against their manifest sha256, the broker (TCP connect), the clock
(NTP synchronised), free disk on the data dir, the event database (``PRAGMA quick_check``), the
daemon (control socket), the systemd unit (``systemctl show``), a broker password sent without TLS,
and secret files (broker password, private keys) that their group or others can read.

:func:`exit_code` turns them into doctor's exit code: 0 every check ok, 1 warnings only, 2 at least one failure.

Only the standard library, pyserial's ``list_ports`` and the station's own light modules are
imported: the checks must run quickly on a box whose camera stack is what is broken.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import sqlite3
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.ops.mqtt_url import parse_mqtt_url

SERVICE = "checkpoint-station"
SERVICE_USER = "checkpoint"
SERIAL_BY_ID = Path("/dev/serial/by-id")
STABLE_THERMAL = Path("/dev/checkpoint-thermal")  # systemd/99-checkpoint-station.rules
STABLE_CAMERA = Path("/dev/checkpoint-camera")
LEVELS = ("ok", "warn", "fail")


@dataclass
class Check:
    """One check's verdict, what it saw and, when not ok, the fix to type."""

    name: str
    level: str  # ok | warn | fail
    detail: str
    fix: str = ""


def exit_code(checks: list[Check]) -> int:
    """Return doctor's exit code: 0 every check ok, 1 warnings only, 2 at least one failure."""
    levels = {c.level for c in checks}
    return 2 if "fail" in levels else 1 if "warn" in levels else 0


# -- individual checks ---------------------------------------------------------------------------------


def check_config(config_path: Path) -> tuple[Check, Any]:
    """Check the config file loads and validates; return the verdict and the config (None when unusable)."""
    from station.config import ConfigError, load_config, validate_text

    if not config_path.exists():
        try:
            cfg = load_config(None)
        except ConfigError as exc:
            return Check("config", "fail", f"defaults + environment invalid: {exc}", "fix the CHECKPOINT_* environment variables"), None
        return Check(
            "config",
            "warn",
            f"{config_path} does not exist; running on built-in defaults",
            f"install config/station.toml as {config_path} (or pass --config)",
        ), cfg
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        return Check(
            "config",
            "fail",
            f"{config_path}: cannot read: {exc.strerror}",
            f"sudo chgrp {SERVICE_USER} {config_path} && sudo chmod 0640 {config_path}",
        ), None
    problems = validate_text(text, config_path.name)
    if problems:
        return Check(
            "config",
            "fail",
            "; ".join(str(p) for p in problems),
            "stationctl config edit (or fix the lines named) then stationctl config validate",
        ), None
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:  # the file is fine on its own; the environment breaks it
        return Check("config", "fail", str(exc), "fix or unset the CHECKPOINT_* variables named"), None
    return Check("config", "ok", f"{config_path} valid"), cfg


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_groups(user: str) -> set[str] | None:
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    names = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
    names.add(_group_name(pw.pw_gid))
    return names


def _device_access(path: Path, kind: str, group_hint: str) -> Check | None:
    """None if the current user can read and write ``path``; else a failing check with the fix."""
    if os.access(path, os.R_OK | os.W_OK):
        return None
    st = path.stat()
    owner_group = _group_name(st.st_gid)
    return Check(
        kind,
        "fail",
        f"{path} is {stat.filemode(st.st_mode)} group {owner_group}; this user cannot open it",
        f"sudo usermod -aG {owner_group or group_hint} $USER  (then log in again)",
    )


def check_thermal(cfg: Any, daemon_devices: dict[str, Any] | None) -> Check:
    """Check the thermal module's serial port: present, a stable name, readable by the service."""
    port = Path(cfg.thermal.port)
    held = daemon_devices is not None and (daemon_devices.get("thermal") or {}).get("port") == cfg.thermal.port
    if not port.exists():
        return Check(
            "thermal port",
            "fail",
            f"{port} does not exist (module unplugged, or another name)",
            "plug in the thermal module, run `stationctl devices list` and "
            "`stationctl config set thermal.port /dev/serial/by-id/…` with its by-id path",
        )
    if held:
        state = (daemon_devices or {}).get("thermal", {}).get("state")
        level = "ok" if state == "connected" else "fail"
        return Check(
            "thermal port",
            level,
            f"{port} is held by the running daemon, link {state}",
            "" if level == "ok" else "check the cable and baud; `journalctl -u checkpoint-station` says why",
        )
    problem = _device_access(port.resolve(), "thermal port", "dialout")
    if problem is not None:
        return problem
    stable = str(port).startswith(str(SERIAL_BY_ID)) or port == STABLE_THERMAL
    if not stable and str(port).startswith("/dev/tty"):
        return Check(
            "thermal port",
            "warn",
            f"{port} exists but its number can change across replugs/reboots",
            f"install systemd/99-checkpoint-station.rules and set thermal.port {STABLE_THERMAL} (or a /dev/serial/by-id/… path)",
        )
    return Check("thermal port", "ok", f"{port} present and accessible" + (f" -> {port.resolve()}" if port.is_symlink() else ""))


def check_camera(cfg: Any) -> Check:
    """Check the camera device is present and accessible."""
    dev = cfg.camera.device
    if dev.isdigit():
        dev = f"/dev/video{dev}"
    path = Path(dev)
    if not path.exists():
        return Check("camera", "fail", f"{path} does not exist", "plug in the camera; `stationctl devices list` shows the cameras found")
    if path.is_file():
        return Check(
            "camera",
            "warn",
            f"{path} is a video file, not a camera (replay set-up)",
            f"stationctl config set camera.device {STABLE_CAMERA}",
        )
    problem = _device_access(path.resolve(), "camera", "video")
    if problem is not None:
        return problem
    name = video_name(path.resolve().name)
    return Check("camera", "ok", f"{path} present and accessible" + (f" ({name})" if name else ""))


def check_groups() -> list[Check]:
    """Check the service account and this user are in the device groups (dialout, video, gpio)."""
    out: list[Check] = []
    wanted = ("dialout", "video", "gpio")
    service = _user_groups(SERVICE_USER)
    if service is None:
        out.append(
            Check(
                "service account",
                "warn",
                f"no '{SERVICE_USER}' user (the systemd unit runs as it)",
                "sudo install -m 0644 systemd/checkpoint.sysusers.conf /usr/lib/sysusers.d/checkpoint.conf && sudo systemd-sysusers",
            )
        )
    else:
        missing = [g for g in wanted if g not in service]
        out.append(
            Check(
                "service account",
                "fail" if missing else "ok",
                f"{SERVICE_USER} groups: {', '.join(sorted(service))}" + (f"; missing {', '.join(missing)}" if missing else ""),
                f"sudo usermod -aG {','.join(missing)} {SERVICE_USER}" if missing else "",
            )
        )
    if os.geteuid() == 0:
        out.append(Check("user groups", "ok", "running as root (device tests can open everything)"))
        return out
    me = pwd.getpwuid(os.geteuid()).pw_name
    mine = {_group_name(g) for g in os.getgroups()}
    missing = [g for g in wanted if g not in mine]
    existing = {g.gr_name for g in grp.getgrall()}
    missing_existing = [g for g in missing if g in existing]
    out.append(
        Check(
            "user groups",
            "warn" if missing_existing else "ok",
            f"{me} is in {', '.join(sorted(mine))}"
            + (f"; not in {', '.join(missing_existing)} (stationctl test cannot open those devices)" if missing_existing else ""),
            f"sudo usermod -aG {','.join(missing_existing)} {me}  (then log in again)" if missing_existing else "",
        )
    )
    return out


def check_models(cfg: Any) -> Check:
    """Check the model files against their manifest (size, sha256, licence)."""
    from station.app import models_dir_for
    from station.models import verify

    models_dir = models_dir_for(cfg)
    problems = verify(models_dir)
    if problems:
        return Check(
            "models", "fail", f"{models_dir}: " + "; ".join(problems), "stationctl models install --from <dir with a verified model set>"
        )
    return Check("models", "ok", f"{models_dir}: every file matches its manifest sha256")


def check_broker(cfg: Any, timeout_s: float = 2.0) -> Check:
    """Check the broker accepts a TCP connection."""
    url = cfg.mqtt.url
    if not url:
        return Check("broker", "ok", "no broker configured (mqtt.url empty): events stay in the local outbox")
    try:
        endpoint = parse_mqtt_url(url)
    except ValueError as exc:  # the config check names it too; here it is why there is no connection
        return Check("broker", "fail", str(exc), "set mqtt.url to mqtt://host[:port] or mqtts://host[:port]")
    host, port = endpoint.host, endpoint.port
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        return Check(
            "broker",
            "fail",
            f"{host}:{port} not reachable: {exc}",
            f"check the network/VPN and that the broker listens on {host}:{port}; events wait in the outbox meanwhile",
        )
    return Check("broker", "ok", f"{host}:{port} accepts TCP connections")


def check_broker_credentials(cfg: Any, env: Any = None) -> Check:
    """Check no broker password goes over a plain ``mqtt://`` link, readable by anyone on the path."""
    m = cfg.mqtt
    env = os.environ if env is None else env
    scheme = m.url.partition("://")[0].lower()
    source = f"mqtt.password_file {m.password_file}" if m.password_file else f"${m.password_env}" if env.get(m.password_env) else ""
    if not m.username or not source:
        return Check("broker credentials", "ok", f"{scheme}:// without a password")
    if scheme == "mqtt":
        return Check(
            "broker credentials",
            "warn",
            f"user {m.username!r} sends its password (from {source}) over mqtt:// without TLS: "
            "anyone on the network path can read it and act as this station",
            "use mqtts://<broker>:8883 with mqtt.tls_ca_file (systemd/mosquitto/README.md sets the broker up)",
        )
    return Check("broker credentials", "ok", f"user {m.username!r}, password from {source}, over TLS")


def check_command_keys(cfg: Any, data_dir: Path) -> Check:
    """Without a centre key no remote command that changes the gate or the station can be accepted."""
    from station.link.command_auth import CommandKeys

    configured = Path(cfg.centre.command_keys_file) if cfg.centre.command_keys_file else None
    keys = CommandKeys(configured, data_dir)
    ids = keys.stats()["key_ids"]
    if keys.problem and not ids:
        return Check(
            "centre keys",
            "fail",
            f"no usable command-centre key: {keys.problem}",
            "fix centre.command_keys_file (PEM public keys; `stationctl cmd keygen` makes a pair)",
        )
    if not ids:
        return Check(
            "centre keys",
            "warn",
            "no command-centre key (centre.command_keys_file empty): open-gate, set-threshold, "
            "resident-plates, trust-list and reload-config over MQTT are all refused (no_keys_configured)",
            "install the centre's public key and set centre.command_keys_file",
        )
    detail = f"{len(ids)} key(s) from {keys.source} (version {keys.version}): {', '.join(ids)}"
    return Check("centre keys", "warn" if keys.problem else "ok", detail + (f"; {keys.problem}" if keys.problem else ""))


# Config keys naming files that hold secrets whatever their content; other *_file keys count when the
# file holds a private key or their name says password/secret/token.
_SECRET_FILE_KEYS = ("mqtt.password_file", "mqtt.tls_key_file")
_SECRET_NAME_HINTS = ("password", "secret", "token", "private", "signing")


def _file_keys(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, path) of every non-empty ``*_file`` setting in the config dump."""
    out: list[tuple[str, str]] = []
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _file_keys(v, key + ".")
        elif isinstance(v, str) and v and k.endswith("_file"):
            out.append((key, v))
    return out


def _holds_private_key(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"PRIVATE KEY-----" in f.read(65536)
    except OSError:
        return False


def check_secret_files(cfg: Any) -> Check:
    """Password and private-key files must be readable by their owner only (0600, owned by the service)."""
    loose: list[str] = []
    missing: list[str] = []
    checked = 0
    for key, value in _file_keys(cfg.model_dump(mode="json")):
        path = Path(value)
        named_secret = key in _SECRET_FILE_KEYS or any(h in key.rsplit(".", 1)[-1] for h in _SECRET_NAME_HINTS)
        if not named_secret and not _holds_private_key(path):
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            missing.append(f"{key} {path}")
            continue
        except OSError:
            continue  # a directory on the way we may not enter: the daemon's own check reports it
        checked += 1
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            who = " and ".join(w for w, bits in (("group", 0o070), ("others", 0o007)) if mode & bits)
            loose.append(f"{key} {path} is {stat.filemode(st.st_mode)} (readable or writable by {who})")
    if loose:
        paths = " ".join(item.split(" ")[1] for item in loose)
        return Check(
            "secret files",
            "warn",
            "; ".join(loose + [f"{m} does not exist" for m in missing]),
            f"sudo chown {SERVICE_USER}:{SERVICE_USER} {paths} && sudo chmod 0600 {paths}",
        )
    if missing:
        return Check(
            "secret files",
            "warn",
            "; ".join(f"{m} does not exist" for m in missing),
            "create it (0600, owned by the service account) or clear the setting",
        )
    return Check(
        "secret files",
        "ok",
        f"{checked} secret file(s), each readable by its owner only" if checked else "no password or private-key files configured",
    )


def check_clock() -> Check:
    """Check the clock is NTP-synchronised (codes are judged by it)."""
    if shutil.which("timedatectl"):
        try:
            r = subprocess.run(
                ["timedatectl", "show", "-p", "NTPSynchronized", "-p", "NTP", "--value"],
                check=False,
                capture_output=True,
                text=True,
                timeout=5,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            r = None
            err = str(exc)
        if r is not None and r.returncode == 0:
            values = r.stdout.split()
            synced = values[0] if values else ""
            if synced == "yes":
                return Check("clock", "ok", "NTP synchronised")
            return Check(
                "clock",
                "warn",
                "clock not NTP-synchronised: events are marked clock_synced=false",
                "sudo timedatectl set-ntp true; check that the NTP server is reachable",
            )
        err = " ".join((r.stderr if r is not None else err).split()) or "no answer"
    else:
        err = "timedatectl not installed"
    from station.ops.clock import TIMESYNC_FLAG

    if os.path.exists(TIMESYNC_FLAG):
        return Check("clock", "ok", f"synchronised ({TIMESYNC_FLAG} present)")
    return Check(
        "clock",
        "warn",
        f"cannot tell whether the clock is synchronised ({err})",
        "install/enable systemd-timesyncd (or chrony) so events carry a trusted time",
    )


def check_disk(data_dir: Path) -> Check:
    """Check free space on the data directory's file system."""
    probe = data_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_pct = 100.0 * usage.free / usage.total if usage.total else 0.0
    detail = f"{probe}: {usage.free / 1e9:.1f} GB free ({free_pct:.0f} %)"
    if usage.free < 200e6 or free_pct < 3:
        return Check("disk", "fail", detail, "free space: `stationctl data erase --until …`, lower retention.events_days, or a bigger card")
    if usage.free < 1e9 or free_pct < 10:
        return Check("disk", "warn", detail, "lower retention.events_days or clean up the card soon")
    return Check("disk", "ok", detail)


def check_database(data_dir: Path) -> Check:
    """Check the event database passes ``PRAGMA quick_check``."""
    from station.store.events import DB_NAME

    db = data_dir / DB_NAME
    if not db.exists():
        return Check("database", "warn", f"no event database at {db} yet", "start the daemon once (it creates it)")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check("database", "fail", f"{db}: {exc}", "stop the daemon, copy the file aside and restore the newest *.bak")
    if result != "ok":
        return Check("database", "fail", f"{db}: quick_check: {result}", "stop the daemon, keep a copy, restore the newest *.pre-v*.bak")
    return Check("database", "ok", f"{db}: quick_check ok, schema v{version}")


def check_daemon(data_dir: Path) -> tuple[Check, dict[str, Any] | None]:
    """Check the daemon answers on its control socket; return the verdict and the devices it holds."""
    from station.ops.control import ControlError, ControlUnavailable, ask

    try:
        ping, path = ask(data_dir, "ping", timeout_s=2.0)
        devices, _ = ask(data_dir, "devices", timeout_s=2.0)
    except (ControlUnavailable, ControlError) as exc:
        return Check("daemon", "warn", f"not answering: {exc}", "sudo systemctl start checkpoint-station"), None
    return Check("daemon", "ok", f"pid {ping.get('pid')} answers on {path}"), devices


def check_unit() -> Check:
    """Check the systemd unit is installed, active and not restarting."""
    if not shutil.which("systemctl"):
        return Check("systemd unit", "warn", "not installed (no systemctl on this host)", "see systemd/README.md")
    try:
        r = subprocess.run(
            ["systemctl", "show", SERVICE, "-p", "LoadState,ActiveState,SubState,NRestarts,Result"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("systemd unit", "warn", f"systemctl failed: {exc}")
    props = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    if r.returncode != 0 or not props:
        return Check(
            "systemd unit",
            "warn",
            f"no unit state ({' '.join((r.stderr or r.stdout).split()) or 'systemd not running'})",
            "not running under systemd: start the daemon by hand (`station run`) or install the unit",
        )
    if props.get("LoadState") == "not-found":
        return Check("systemd unit", "warn", f"{SERVICE}.service not installed", "see systemd/README.md (Install)")
    detail = f"{props.get('ActiveState')}/{props.get('SubState')}, {props.get('NRestarts', '?')} restarts, result {props.get('Result')}"
    if props.get("ActiveState") == "failed":
        return Check("systemd unit", "fail", detail, f"journalctl -u {SERVICE} -n 100; then sudo systemctl restart {SERVICE}")
    if props.get("ActiveState") != "active":
        return Check("systemd unit", "warn", detail, f"sudo systemctl enable --now {SERVICE}")
    if int(props.get("NRestarts", "0") or 0) > 0:
        return Check("systemd unit", "warn", detail, f"it has restarted: journalctl -u {SERVICE} --since -1d | grep -i error")
    return Check("systemd unit", "ok", detail)


def run_checks(config_path: Path, data_dir_override: Path | None, broker_timeout_s: float = 2.0) -> list[Check]:
    """Run every check, going on with the defaults when the config is unusable."""
    from station.app import data_dir_for

    checks: list[Check] = []
    cfg_check, cfg = check_config(config_path)
    checks.append(cfg_check)
    if cfg is None:
        from station.config import StationConfig

        cfg = StationConfig()  # go on with defaults: the other checks still tell the technician things
    data_dir = data_dir_for(cfg, data_dir_override)
    daemon_check, devices = check_daemon(data_dir)
    checks.append(daemon_check)
    checks.append(check_unit())
    checks.append(check_thermal(cfg, devices))
    checks.append(check_camera(cfg))
    checks.extend(check_groups())
    checks.append(check_models(cfg))
    checks.append(check_broker(cfg, broker_timeout_s))
    if cfg.mqtt.url:
        checks.append(check_broker_credentials(cfg))
        checks.append(check_command_keys(cfg, data_dir))
    checks.append(check_secret_files(cfg))
    checks.append(check_clock())
    checks.append(check_disk(data_dir))
    checks.append(check_database(data_dir))
    return checks


def video_name(node: str, sys_root: Path = Path("/sys")) -> str:
    """Return the kernel's name for a /dev/video node (``""`` when it has none)."""
    try:
        return (sys_root / "class" / "video4linux" / node / "name").read_text().strip()
    except OSError:
        return ""
