"""``stationctl bugreport``: one ``.tar.gz`` a technician can mail to support, with no secrets in it.

Contents (``MANIFEST.txt`` inside lists them):

``config/station.toml``    the config file as written (comments kept), secret values replaced
``config/effective.json``  the effective configuration (defaults ← file ← environment), redacted
``config/environment.json`` the ``CHECKPOINT_*`` variables, secret ones redacted
``versions.json``          Python, OS, kernel, the station's packages and their versions
``logs.txt``               the last 2000 log lines (journald or logging.file), credentials in URLs masked
``daemon.json``            live status and counters from the control socket (or the status file)
``doctor.json``            ``stationctl doctor --json``
``outbox.json``            outbox depth (no payloads: they hold personal data)

Redaction is by key name (password, secret, token, hash, credential, private, key — except file
paths ``*_file``) and by value shape (PEM blocks, password hashes ``$argon2…``/``$2b$…``/``pbkdf2…``,
``user:password@`` in URLs), so a key added later by another part of the station is covered too.
Files the config only points to (``mqtt.password_file``, TLS keys) are never read.

Exit codes: 0 written, 1 could not write the archive, 2 usage error.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import sys
import tarfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from station.cli.common import ControlError, ControlUnavailable, Ctx, ask_daemon, recent_lines
from station.ops.redact import redact_url

REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"(pass(word|wd|phrase)?|secret|token|hash|credential|private|api_?key|(^|_)key$|(^|_)pin(_code)?$|salt)", re.I)
_NOT_SECRET_KEY = re.compile(r"(_file|_path|_dir|_env)$|^(relay|buzzer|green|red|amber)_pin$", re.I)
_SECRET_VALUE = re.compile(r"(-----BEGIN [A-Z ]+-----|^\$(argon2(id|i|d)?|2[aby]|5|6|scrypt|pbkdf2)[$-]|^pbkdf2[:_$]|^scrypt[:$])")
PACKAGES = (
    "checkpoint-station",
    "numpy",
    "opencv-python-headless",
    "onnxruntime",
    "paho-mqtt",
    "pydantic",
    "pyserial",
    "gpiozero",
    "pyzbar",
    "zxing-cpp",
    "segno",
    "tomlkit",
    "click",
    "starlette",
    "uvicorn",
    "cryptography",
    "cbor2",
    "platformdirs",
)


def is_secret_key(key: str) -> bool:
    """Return whether a setting named ``key`` holds a secret (by its name)."""
    # "relay_pin" is a GPIO number and "tls_key_file" a path: named like secrets, they are not.
    return bool(_SECRET_KEY.search(key)) and not _NOT_SECRET_KEY.search(key)


def redact_value(key: str, value: Any) -> Any:
    """Return ``value`` with secrets replaced: by the key's name, the value's shape, or a password in a URL."""
    if isinstance(value, dict):
        return {k: redact_value(k, v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_value(key, v) for v in value]
    if isinstance(value, str):
        if value and (is_secret_key(key) or _SECRET_VALUE.search(value)):
            return REDACTED
        return redact_url(value, REDACTED)
    if is_secret_key(key) and value not in (None, "", 0, False):
        return REDACTED
    return value


def redact_toml(text: str) -> str:
    """Return the TOML document with secret values replaced, comments and layout kept.

    Text that is not valid TOML is redacted line by line instead (it is still what support needs).
    """
    import tomlkit
    import tomlkit.items

    try:
        doc = tomlkit.parse(text)
    except Exception:  # tomlkit raises several parse error types; fall back to line redaction
        return "\n".join(redact_line(line) for line in text.splitlines()) + "\n"

    def walk(node: Any) -> None:
        for key in list(node.keys()):
            item = node[key]
            if isinstance(item, (tomlkit.items.Table, tomlkit.items.InlineTable)):
                walk(item)
                continue
            if isinstance(item, tomlkit.items.AoT):
                for t in item:
                    walk(t)
                continue
            plain = item.unwrap() if isinstance(item, tomlkit.items.Item) else item
            red = redact_value(str(key), plain)
            if red != plain:
                node[key] = red

    walk(doc)
    return "\n".join(redact_comment(line) for line in tomlkit.dumps(doc).splitlines()) + "\n"


def redact_comment(line: str) -> str:
    """Replace secrets pasted into comments (a PEM line, a hash, a URL with a password)."""
    if "#" not in line:
        return line
    code, _, comment = line.partition("#")
    return code + "#" + redact_url(_SECRET_VALUE.sub(REDACTED, comment), REDACTED)


_ASSIGN = re.compile(r"^(\s*([A-Za-z0-9_\-]+)\s*=\s*)(.*)$")


def redact_line(line: str) -> str:
    """Return one line of a file that is not valid TOML, its secret assignment or URL password replaced."""
    m = _ASSIGN.match(line)
    if m and (is_secret_key(m.group(2)) or _SECRET_VALUE.search(m.group(3).strip().strip("'\""))):
        return f'{m.group(1)}"{REDACTED}"'
    return redact_url(line, REDACTED)


def versions() -> dict[str, Any]:
    """Return Python, OS, kernel and the versions of the station's packages."""
    pkgs: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    os_release = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                os_release[k] = v.strip('"')
    except OSError:
        pass
    return {
        "python": sys.version,
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "os": os_release.get("PRETTY_NAME"),
        "packages": pkgs,
    }


def _daemon_info(data_dir: Path) -> dict[str, Any]:
    from station.ops.runtime import read_runtime_status

    try:
        status, path = ask_daemon(data_dir, "status")
        counters, _ = ask_daemon(data_dir, "counters")
        return {"source": f"control socket {path}", "status": status, "counters": counters}
    except (ControlUnavailable, ControlError) as exc:
        return {"source": f"status file (control socket: {exc})", "status": read_runtime_status(data_dir), "counters": None}


def _outbox(obj: Ctx, cfg: Any) -> dict[str, Any]:
    from station.app import data_dir_for
    from station.store.events import DB_NAME, SqliteEventStore, StoreError

    db = data_dir_for(cfg, obj.data_dir_override) / DB_NAME
    try:
        store = SqliteEventStore(db, station_id=cfg.station.id, site=cfg.station.site, topic_prefix=cfg.mqtt.topic_prefix, read_only=True)
    except (StoreError, OSError, ValueError) as exc:
        return {"error": str(exc)}
    except Exception as exc:  # sqlite3 errors on a damaged file: the report must still be written
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        return dict(store.outbox_stats())
    finally:
        store.close()


def build_report(obj: Ctx, out: Path) -> list[str]:
    """Write the archive to ``out``; return the member names."""
    from dataclasses import asdict

    from station.cli.checks import exit_code, run_checks
    from station.config import ConfigError, StationConfig, load_config

    members: dict[str, bytes] = {}
    cfg_path: Path = obj.config
    if cfg_path.exists():
        try:
            members["config/station.toml"] = redact_toml(cfg_path.read_text(encoding="utf-8")).encode()
        except OSError as exc:
            members["config/station.toml"] = f"# cannot read {cfg_path}: {exc}\n".encode()
    try:
        cfg = load_config(cfg_path if cfg_path.exists() else None)
        cfg_error = None
    except ConfigError as exc:
        cfg, cfg_error = StationConfig(), str(exc)
    members["config/effective.json"] = json.dumps(
        {"config_file": str(cfg_path), "error": cfg_error, "effective": redact_value("", cfg.model_dump(mode="json"))},
        indent=2,
        ensure_ascii=False,
    ).encode()
    env = {k: redact_value(k, v) for k, v in sorted(os.environ.items()) if k.startswith("CHECKPOINT_")}
    members["config/environment.json"] = json.dumps(env, indent=2).encode()
    members["versions.json"] = json.dumps(versions(), indent=2).encode()
    source, lines = recent_lines(cfg)
    members["logs.txt"] = (f"# source: {source}\n" + "\n".join(redact_url(ln, REDACTED) for ln in lines) + "\n").encode()
    from station.app import data_dir_for

    data_dir = data_dir_for(cfg, obj.data_dir_override)
    members["daemon.json"] = json.dumps(redact_value("", _daemon_info(data_dir)), indent=2, default=str).encode()
    checks = run_checks(cfg_path, obj.data_dir_override)
    members["doctor.json"] = json.dumps(
        {"exit_code": exit_code(checks), "checks": [redact_value("", asdict(c)) for c in checks]}, indent=2, ensure_ascii=False
    ).encode()
    members["outbox.json"] = json.dumps(_outbox(obj, cfg), indent=2, default=str).encode()
    members["MANIFEST.txt"] = (
        "checkpoint station bug report\n"
        f"created {time.strftime('%Y-%m-%dT%H:%M:%S%z')} for {cfg.station.site}/{cfg.station.id}\n"
        + "".join(f"{name}\t{len(data)} bytes\n" for name, data in members.items())
    ).encode()
    root = out.name.removesuffix(".tar.gz")
    tmp = out.with_name(out.name + ".tmp")
    now = time.time()
    with tarfile.open(tmp, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size, info.mtime, info.mode = len(data), now, 0o640
            tar.addfile(info, io.BytesIO(data))
    os.chmod(tmp, 0o640)  # it still holds site names and logs: not world-readable
    os.replace(tmp, out)
    return [f"{root}/{n}" for n in members]


@click.command("bugreport")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Default: ./checkpoint-bugreport-<site>-<station>-<time>.tar.gz",
)
@click.pass_obj
def bugreport(obj: Ctx, out: Path | None) -> None:
    """One tar.gz for support: redacted config, versions, recent logs, counters, doctor output."""
    from station.config import ConfigError, load_config

    if out is None:
        try:
            cfg = load_config(obj.config if obj.config.exists() else None)
            who = f"{cfg.station.site}-{cfg.station.id}"
        except ConfigError:
            who = "unknown"
        out = Path(f"checkpoint-bugreport-{who}-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz")
    try:
        names = build_report(obj, out)
    except OSError as exc:
        click.echo(f"cannot write {out}: {exc}", err=True)
        sys.exit(1)
    click.echo(f"wrote {out} ({out.stat().st_size} bytes, {len(names)} files); check it before sending: tar tzf {out}")
