"""``stationctl doctor`` (is this box fit to screen? what to fix) and ``stationctl devices list``.

The checks themselves are in station/cli/checks.py (the bug report runs them too).

Exit codes of ``doctor``: 0 every check ok, 1 warnings only, 2 at least one failure.

Only the standard library, pyserial's ``list_ports`` and the station's own light modules are
imported: doctor must run quickly on a box whose camera stack is what is broken.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from station.cli.checks import LEVELS, STABLE_THERMAL, exit_code, run_checks, video_name
from station.cli.common import Ctx, group


@click.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: checks and the exit code")
@click.option("--broker-timeout", type=click.FloatRange(0.1, 30), default=2.0, show_default=True, help="TCP connect timeout (s)")
@click.pass_obj
def doctor(obj: Ctx, as_json: bool, broker_timeout: float) -> None:
    """Check devices, permissions, models, broker, clock, disk, config and the unit; print fixes.

    Exit codes: 0 all ok, 1 warnings only, 2 at least one failure.
    """
    checks = run_checks(obj.config, obj.data_dir_override, broker_timeout)
    code = exit_code(checks)
    # The daemon publishes the last result in state/fleet (the centre's fleet view). With a config
    # that does not load there is no daemon to publish it, and no data dir to keep it in.
    if all(not (c.name == "config" and c.level == "fail") for c in checks):
        try:
            from station.link.fleet_state import write_doctor_result

            write_doctor_result(obj.data_dir(), code, checks)
        except Exception as exc:  # noqa: BLE001 - a result that cannot be kept never hides the checks themselves
            click.echo(f"(doctor result not kept for the fleet view: {type(exc).__name__}: {exc})", err=True)
    if as_json:
        click.echo(json.dumps({"exit_code": code, "checks": [asdict(c) for c in checks]}, indent=2, ensure_ascii=False))
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        for c in checks:
            click.echo(f"[{marks[c.level]}] {c.name}: {c.detail}")
            if c.fix and c.level != "ok":
                click.echo(f"       fix: {c.fix}")
        summary = {lvl: sum(c.level == lvl for c in checks) for lvl in LEVELS}
        click.echo(f"{summary['ok']} ok, {summary['warn']} warnings, {summary['fail']} failures")
    sys.exit(code)


# -- devices ----------------------------------------------------------------------------------------------


def _links_to(directory: Path) -> dict[str, list[str]]:
    """Map each realpath to the symlinks in ``directory`` pointing at it."""
    out: dict[str, list[str]] = {}
    if directory.is_dir():
        for link in sorted(directory.iterdir()):
            out.setdefault(os.path.realpath(link), []).append(str(link))
    return out


def list_serial(dev_root: Path = Path("/dev")) -> list[dict[str, Any]]:
    """Return the serial ports with their by-id names, VID:PID and a guess at what is behind them."""
    from serial.tools import list_ports

    by_id = _links_to(dev_root / "serial" / "by-id")
    stable = (
        {os.path.realpath(dev_root / STABLE_THERMAL.name): str(dev_root / STABLE_THERMAL.name)}
        if (dev_root / STABLE_THERMAL.name).exists()
        else {}
    )
    ports = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        real = os.path.realpath(p.device)
        ports.append(
            {
                "device": p.device,
                "by_id": by_id.get(real, []),
                "stable_name": stable.get(real),
                "vid_pid": f"{p.vid:04x}:{p.pid:04x}" if p.vid is not None and p.pid is not None else None,
                "serial_number": p.serial_number,
                "manufacturer": p.manufacturer,
                "description": p.description,
                "likely": _serial_guess(p.vid, p.pid),
            }
        )
    return ports


# USB-UART bridges the GY-MCU90640 ships behind (and common HTPA adapters).
_BRIDGES = {
    (0x1A86, 0x7523): "CH340 USB-UART (GY-MCU90640 usually)",
    (0x1A86, 0x55D4): "CH9102 USB-UART",
    (0x10C4, 0xEA60): "CP2102 USB-UART (GY-MCU90640 some batches)",
    (0x0403, 0x6001): "FTDI FT232R USB-UART",
}


def _serial_guess(vid: int | None, pid: int | None) -> str | None:
    return _BRIDGES.get((vid or 0, pid or 0))


def list_cameras(dev_root: Path = Path("/dev"), sys_root: Path = Path("/sys")) -> list[dict[str, Any]]:
    """Return the /dev/video* nodes with their names, by-id and by-path links and whether we may open them."""
    by_id = _links_to(dev_root / "v4l" / "by-id")
    by_path = _links_to(dev_root / "v4l" / "by-path")
    cams = []
    for node in sorted(dev_root.glob("video*"), key=lambda p: (len(p.name), p.name)):
        real = os.path.realpath(node)
        cams.append(
            {
                "device": str(node),
                "name": video_name(node.name, sys_root),
                "by_id": by_id.get(real, []),
                "by_path": by_path.get(real, []),
                "accessible": os.access(node, os.R_OK | os.W_OK),
            }
        )
    return cams


@group("devices")
def devices() -> None:
    """List the serial ports and cameras this box can see."""


@devices.command("list")
@click.option("--json", "as_json", is_flag=True)
def devices_list(as_json: bool) -> None:
    """List serial ports (with /dev/serial/by-id names, VID:PID) and /dev/video* cameras (with names)."""
    data = {"serial": list_serial(), "cameras": list_cameras()}
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    click.echo("serial ports:" if data["serial"] else "serial ports: none found")
    for p in data["serial"]:
        names = ", ".join(p["by_id"]) or "no by-id link"
        click.echo(
            f"  {p['device']}  {p['vid_pid'] or '-'}  {p['description']}  [{names}]" + (f"  <- {p['likely']}" if p["likely"] else "")
        )
    click.echo("cameras:" if data["cameras"] else "cameras: none found")
    for c in data["cameras"]:
        click.echo(f"  {c['device']}  {c['name'] or '?'}  [{', '.join(c['by_id']) or 'no by-id link'}]")
    if data["serial"]:
        click.echo("set the thermal port with: stationctl config set thermal.port <by-id path>")
