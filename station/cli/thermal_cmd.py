"""``stationctl thermal …`` and ``stationctl calibrate thermal``: the thermal module on the bench.

``decode`` reads a raw byte capture, ``read`` a live port (through the station's own driver: baud
probe, configuration, resync), ``record`` writes a capture with timestamps that the emulator can
replay (``drivers/thermal/capture.py``). ``calibrate thermal`` fits the skin→core compensation from
reference readings (a clinical thermometer or a blackbody) and, given point pairs, the registration
homography; it writes a machine-written ``calibration.toml`` beside the config, with a version
string that every event records (``station run --override calibration.toml``).

Only numpy, pyserial and the station's own thermal code are imported: no cv2, no onnxruntime.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from station.cli.common import group
from station.ops.fileio import atomic_write

PROFILES = ("gy-mcu90640", "htpa32x32")


def _profile(name: str) -> Any:
    if name == "htpa32x32":
        from drivers.thermal.htpa_protocol import HTPA32X32

        return HTPA32X32
    from drivers.thermal.gy_protocol import GY_MCU90640

    return GY_MCU90640


def _frame_line(index: int, ta_c: float, pixels: Any, t: float | None = None) -> str:
    obj: dict[str, Any] = {"index": index, "ta_c": round(float(ta_c), 2)}
    if t is not None:
        obj["t"] = round(t, 6)
    obj["pixels_c"] = [[round(float(v), 2) for v in row] for row in pixels]
    return json.dumps(obj)


@group("thermal")
def thermal() -> None:
    """Decode, read and record the thermal module's byte stream."""


@thermal.command("decode")
@click.argument("capture", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per valid frame, then a summary line")
@click.option("--profile", type=click.Choice(PROFILES), default="gy-mcu90640", show_default=True)
def decode(capture: Path, as_json: bool, profile: str) -> None:
    """Decode a raw byte capture: every valid frame in scene orientation (rows top→bottom, columns left→right)."""
    from drivers.thermal.capture import decode_capture

    frames, parser = decode_capture(capture.read_bytes(), _profile(profile))
    for i, f in enumerate(frames):
        if as_json:
            click.echo(_frame_line(i, f.die_c, f.pixels_c))
        else:
            click.echo(f"frame {i}: ta {f.die_c:.2f} °C, min {f.pixels_c.min():.2f} max {f.pixels_c.max():.2f} °C")
    c = parser.counters
    summary = {"frames": len(frames), "checksum_errors": c.checksum_errors, "resync_bytes": c.resync_bytes}
    if parser.buffered:
        summary["trailing_bytes"] = parser.buffered  # an incomplete last message (the capture was cut)
    if c.implausible_frames:
        summary["implausible_frames"] = c.implausible_frames
    click.echo(json.dumps({"summary": summary}) if as_json else f"summary: {summary}")


def _baud(value: str) -> int | None:
    return None if value == "auto" else int(value)


def _start_module(port: str, baud: str, refresh_hz: str) -> Any:
    """Start the station's own driver (baud found, module configured); exit 1 if no module answers."""
    from drivers.thermal.gy_mcu90640 import GyMcu90640Source
    from drivers.thermal.serial_source import ThermalLinkError

    src = GyMcu90640Source(port, baud=_baud(baud), refresh_hz=float(refresh_hz), require_link_at_start=True)
    try:
        src.start()
    except ThermalLinkError as exc:
        click.echo(f"no module on {port}: {exc}", err=True)
        sys.exit(1)
    return src


@thermal.command("read")
@click.option("--port", required=True, help="Serial device (a /dev/serial/by-id/… path is best)")
@click.option("--baud", type=click.Choice(["auto", "9600", "115200", "460800"]), default="auto", show_default=True)
@click.option("--refresh-hz", type=click.Choice(["0.5", "1", "2", "4", "8"]), default="4", show_default=True)
@click.option("--frames", "count", type=click.IntRange(1, 100000), default=1, show_default=True)
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Give up after this many seconds without a frame")
@click.option("--json", "as_json", is_flag=True)
def read(port: str, baud: str, refresh_hz: str, count: int, timeout: float, as_json: bool) -> None:
    """Read N frames from a live module through the station's driver; exit 1 if they do not come."""
    src = _start_module(port, baud, refresh_hz)
    got = 0
    try:
        while got < count:
            f = src.read_frame(timeout)
            if f is None:
                break
            click.echo(
                _frame_line(got, f.die_c, f.pixels_c, f.t)
                if as_json
                else f"frame {got}: ta {f.die_c:.2f} °C, max {f.pixels_c.max():.2f} °C"
            )
            got += 1
    finally:
        st = src.stats()
        src.stop()
    summary = {
        "frames": got,
        "checksum_errors": st["checksum_errors"],
        "resync_bytes": st["resync_bytes"],
        "baud": st["baud"],
        "observed_hz": st["observed_hz"],
        "stalls": st["stalls"],
    }
    click.echo(json.dumps({"summary": summary}) if as_json else f"summary: {summary}")
    if got < count:
        sys.exit(1)


@thermal.command("record")
@click.option("--port", required=True)
@click.option("--baud", type=click.Choice(["auto", "9600", "115200", "460800"]), default="auto", show_default=True)
@click.option("--refresh-hz", type=click.Choice(["0.5", "1", "2", "4", "8"]), default="4", show_default=True)
@click.option("--seconds", type=click.FloatRange(0.1, 86400), default=10.0, show_default=True)
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False), help="CAPTURE.bin (+ CAPTURE.bin.jsonl timestamps)"
)
def record(port: str, baud: str, refresh_hz: str, seconds: float, out: Path) -> None:
    """Record the raw byte stream with timestamps (replay: drivers.thermal.capture.CaptureScene)."""
    import serial

    from drivers.thermal.capture import CaptureWriter, decode_capture

    # The driver finds the baud and configures the module; then the port is read raw, byte for byte.
    src = _start_module(port, baud, refresh_hz)
    found = int(src.stats()["baud"])
    src.stop()
    writer = CaptureWriter(out)
    try:
        with serial.Serial(port, found, timeout=0.05, exclusive=True) as ser:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                writer.write(ser.read(ser.in_waiting or 1))
    finally:
        writer.close()
    frames, parser = decode_capture(out.read_bytes())
    click.echo(
        json.dumps(
            {
                "summary": {
                    "file": str(out),
                    "bytes": writer.bytes,
                    "baud": found,
                    "frames": len(frames),
                    "checksum_errors": parser.checksum_errors,
                }
            }
        )
    )


# -- calibrate ----------------------------------------------------------------------------------------


@group("calibrate")
def calibrate() -> None:
    """Fit calibrations on site and write them to calibration.toml beside the config."""


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if any(v.strip() for v in row.values() if v)]


def _float(row: dict[str, str], key: str) -> float | None:
    v = (row.get(key) or "").strip()
    return float(v) if v else None


@calibrate.command("thermal")
@click.option(
    "--readings",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="CSV: skin_c,reference_c[,ambient_c,size_ratio] — the station's skin statistic and terms (from the "
    "event's temperature.terms) beside a clinical thermometer (or blackbody) reading",
)
@click.option(
    "--points",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="CSV: vx,vy,tx,ty — ≥ 4 heated-target points in visible and thermal pixels: fits the registration",
)
@click.option("--blackbody", type=str, default=None, help="x1,y1,x2,y2@SET_C: a blackbody in view (thermal pixels, set-point)")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Default: calibration.toml beside --config")
@click.option("--dry-run", is_flag=True, help="Fit and show, do not write")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def calibrate_thermal(
    ctx: click.Context, readings: Path | None, points: Path | None, blackbody: str | None, out: Path | None, dry_run: bool, as_json: bool
) -> None:
    """Fit the offset (and the ambient / distance terms where the readings span enough) and the registration."""
    import tomlkit

    from station.config import ConfigError, load_config
    from station.domain.thermal import CalibrationSample, fit_compensation, fit_homography

    if not (readings or points or blackbody):
        raise click.UsageError("give --readings, --points and/or --blackbody")
    cfg_path: Path = ctx.obj.config
    base = ctx.obj.load()
    values: dict[str, Any] = {}
    report: dict[str, Any] = {}
    if readings:
        rows = _read_csv(readings)
        try:
            samples = [
                CalibrationSample(float(r["skin_c"]), float(r["reference_c"]), _float(r, "ambient_c"), _float(r, "size_ratio") or 1.0)
                for r in rows
            ]
        except (KeyError, ValueError) as exc:
            raise click.UsageError(f"{readings}: need numeric columns skin_c,reference_c ({exc})") from exc
        if len(samples) < 3:
            raise click.UsageError(f"{readings}: need at least 3 reference readings, got {len(samples)}")
        fit = fit_compensation(samples, ambient_ref_c=base.thermal.ambient_ref_c)
        values.update(offset_c=fit.offset_c, ambient_gain=fit.ambient_gain, distance_gain=fit.distance_gain)
        report["compensation"] = {"n": fit.n, "fitted": list(fit.fitted), "rmse_c": fit.rmse_c, **values}
    if points:
        rows = _read_csv(points)
        try:
            vis = [[float(r["vx"]), float(r["vy"])] for r in rows]
            th = [[float(r["tx"]), float(r["ty"])] for r in rows]
            h, rmse = fit_homography(vis, th)
        except (KeyError, ValueError) as exc:
            raise click.UsageError(f"{points}: {exc}") from exc
        values["registration"] = [[round(float(v), 8) for v in row] for row in h]
        values["registration_rmse_px"] = round(rmse, 4)
        report["registration"] = {"points": len(vis), "rmse_px": round(rmse, 4), "good": rmse < 1.0}
    if blackbody:
        try:
            box_s, set_s = blackbody.split("@")
            box = [int(v) for v in box_s.split(",")]
            values["reference_box"], values["reference_c"] = box, float(set_s)
        except ValueError as exc:
            raise click.UsageError("--blackbody wants x1,y1,x2,y2@SET_C, e.g. 28,19,31,22@40") from exc
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
    version = time.strftime("thermal-%Y%m%dT%H%M%SZ-", time.gmtime()) + digest
    values["calibration_version"] = version
    report["calibration_version"] = version
    target = out or cfg_path.parent / "calibration.toml"
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Machine-written by `stationctl calibrate thermal` at {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}."))
    doc.add(tomlkit.comment("Do not edit by hand: re-run the calibration. Layer it with `station run --override calibration.toml`."))
    for k, v in report.items():
        if isinstance(v, dict):
            doc.add(tomlkit.comment(f"{k}: {json.dumps(v)}"))
    section = tomlkit.table()
    for k, v in values.items():
        section.add(k, v)
    doc.add("thermal", section)
    text = tomlkit.dumps(doc)
    # Refuse to write what the station would refuse to load. The check reads a private temporary
    # copy, never a file beside the target: a dry run writes nothing where the config lives.
    with tempfile.TemporaryDirectory(prefix="checkpoint-calibration-") as check_dir:
        candidate = Path(check_dir) / target.name
        candidate.write_text(text, encoding="utf-8")
        try:
            load_config(cfg_path if cfg_path.exists() else None, overrides=[candidate], env={})
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            sys.exit(1)
    if not dry_run:
        try:
            atomic_write(target, text, backup=False, new_mode=0o644)
        except OSError as exc:
            click.echo(f"cannot write {target}: {exc.strerror or exc} (give --out FILE, or --dry-run to only see the fit)", err=True)
            sys.exit(1)
        report["written"] = str(target)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(text if dry_run else f"wrote {target}\n{json.dumps(report, indent=2)}")
