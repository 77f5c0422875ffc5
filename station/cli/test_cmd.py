"""``stationctl test relay|buzzer|lights|thermal|camera|qr|detector``: exercise one real part, briefly.

Each test builds the adapter the configuration names — through the same builders as the daemon
(``station.app.build_*``), so it exercises the daemon's code path — drives it for a second or two and
prints a verdict. With ``gate.pin_factory = "mock"`` the gate tests run the real GPIO driver on
gpiozero's ``MockFactory``.

The daemon owns the gate, the serial port and the camera while it runs: ``relay``, ``buzzer``,
``lights``, ``thermal`` and ``camera`` ask it over the control socket first and refuse (exit 3) unless
``--force`` — pulsing the barrier relay behind a running lane's back opens the gate for whoever
stands there, and a second reader on the serial port garbles both streams. ``qr`` and ``detector``
use no device and always run.

cv2 / onnxruntime / pyzbar are imported only inside the tests that need them.

Exit codes: 0 pass, 1 fail, 2 usage or configuration error, 3 refused (daemon running; --force).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import click

from station.cli.common import ControlError, ControlUnavailable, Ctx, ask_daemon, group

EXIT_REFUSED = 3


def _verdict(obj: Ctx, name: str, ok: bool, detail: str, as_json: bool, **data: Any) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"test": name, "ok": ok, "detail": detail, **data}, ensure_ascii=False, default=str))
    else:
        click.echo(f"{name}: {'PASS' if ok else 'FAIL'} — {detail}")
    sys.exit(0 if ok else 1)


def _refuse_if_daemon(obj: Ctx, what: str, force: bool) -> None:
    try:
        ping, path = ask_daemon(obj.data_dir(), "ping", timeout_s=2.0)
    except (ControlUnavailable, ControlError):
        return
    if force:
        click.echo(f"warning: the daemon (pid {ping.get('pid')}) is running; testing {what} anyway (--force)", err=True)
        return
    click.echo(
        f"refused: the station daemon (pid {ping.get('pid')}, {path}) is running and owns the {what}; "
        "stop it (sudo systemctl stop checkpoint-station) or pass --force",
        err=True,
    )
    sys.exit(EXIT_REFUSED)


@group("test")
def test() -> None:
    """Exercise one part for real and print a verdict (exit 0 pass, 1 fail, 3 refused)."""


# -- gate outputs --------------------------------------------------------------------------------


def _run_gate(obj: Ctx, name: str, steps: list[tuple[str, str]], wait_s: float) -> tuple[list[tuple[float, str, Any]], dict[str, Any]]:
    """Run gate commands (action, decision) one after another, ``wait_s`` apart; the gate's history."""
    from gpiozero.exc import PinFactoryFallback

    from drivers.gate.gpio_gate import GpioGate
    from station.app import build_gate
    from station.domain.model import Decision, GateAction, GateCommand
    from station.ops.clock import SystemClock

    cfg = obj.load()
    clock = SystemClock()
    try:
        with warnings.catch_warnings():
            # gpiozero warns once per factory it tries; the technician needs only the verdict below.
            warnings.simplefilter("ignore", PinFactoryFallback)
            gate = build_gate(cfg, clock)
    except Exception as exc:  # gpiozero raises many kinds (no GPIO, pin busy): all are a failed test
        _verdict(obj, name, False, f"cannot open the GPIO pins: {type(exc).__name__}: {exc}", obj.as_json)
    t0 = clock.monotonic()
    results = []
    try:
        for action, decision in steps:
            now = clock.monotonic()
            cmd = GateCommand(
                event_id=f"stationctl-test-{name}",
                action=GateAction(action),
                decision=Decision(decision),
                issued_t=now,
                deadline_t=now + 1.0,
            )
            res = gate.execute(cmd, clock.monotonic())
            results.append({"action": action, "executed": res.executed, "reason": res.reason})
            time.sleep(wait_s)
        gate.safe_state()
        history = [(round(t - t0, 3), out, v) for t, out, v in gate.history() if t >= t0]
        stats = dict(gate.stats()) if isinstance(gate, GpioGate) else {}  # the port has no counters; the GPIO gate does
    finally:
        gate.close()
    return history, {"commands": results, "gate": stats, "pin_factory": cfg.gate.pin_factory}


def _went_on_and_off(history: list[tuple[float, str, Any]], output: str) -> bool:
    values = [v for _t, out, v in history if out == output]
    return True in values and values[-1] is False


def _gate_test(obj: Ctx, name: str, force: bool, outputs: list[str], steps: list[tuple[str, str]], wait_s: float) -> None:
    _refuse_if_daemon(obj, "gate outputs", force)
    history, data = _run_gate(obj, name, steps, wait_s)
    seen = {o: _went_on_and_off(history, o) for o in outputs}
    ok = all(seen.values()) and all(c["executed"] for c in data["commands"])
    detail = ", ".join(f"{o} {'on→off' if s else 'NOT switched'}" for o, s in seen.items())
    if not obj.as_json:
        for t, out, v in history:
            click.echo(f"  +{t:6.3f} s  {out:<6s} {'on' if v else 'off'}")
    _verdict(obj, name, ok, f"{detail} (pins via {data['pin_factory']} factory)", obj.as_json, history=history, **data)


@test.command("relay")
@click.option("--force", is_flag=True, help="Even while the daemon runs (it owns the gate)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def test_relay(obj: Ctx, force: bool, as_json: bool) -> None:
    """Release the barrier once (relay on for gate.open_s, green light), then back to safe."""
    obj.as_json = as_json
    open_s = obj.load().gate.open_s
    _gate_test(obj, "relay", force, ["relay", "green"], [("open", "pass")], open_s + 0.3)


@test.command("buzzer")
@click.option("--force", is_flag=True, help="Even while the daemon runs (it owns the gate)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def test_buzzer(obj: Ctx, force: bool, as_json: bool) -> None:
    """One long beep (the manual-check pattern); the relay is not touched."""
    obj.as_json = as_json
    _gate_test(obj, "buzzer", force, ["buzzer"], [("hold", "manual_check")], 1.0)


@test.command("lights")
@click.option("--force", is_flag=True, help="Even while the daemon runs (it owns the gate)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def test_lights(obj: Ctx, force: bool, as_json: bool) -> None:
    """Red (refusal pattern), then amber (retry pattern); green lights with `test relay` only."""
    obj.as_json = as_json
    _gate_test(obj, "lights", force, ["red", "amber"], [("hold", "deny_code"), ("retry", "retry")], 1.0)


# -- sensors -------------------------------------------------------------------------------------


@test.command("thermal")
@click.option("--frames", type=click.IntRange(1, 1000), default=3, show_default=True)
@click.option("--timeout", type=click.FloatRange(0.5, 120), default=10.0, show_default=True, help="Seconds to wait for each frame")
@click.option("--force", is_flag=True, help="Even while the daemon runs (it holds the port)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def test_thermal(obj: Ctx, frames: int, timeout: float, force: bool, as_json: bool) -> None:
    """Open thermal.port with the configured driver and read a few frames."""
    from station.app import build_thermal

    obj.as_json = as_json
    _refuse_if_daemon(obj, "thermal serial port", force)
    cfg = obj.load()
    src = build_thermal(cfg)
    got: list[dict[str, Any]] = []
    try:
        src.start()
        deadline = time.monotonic() + timeout * frames
        while len(got) < frames and time.monotonic() < deadline:
            f = src.read_frame(min(timeout, max(0.1, deadline - time.monotonic())))
            if f is None:
                break
            px = f.pixels_c
            got.append(
                {
                    "seq": f.seq,
                    "die_c": round(float(f.die_c), 2),
                    "min_c": round(float(px.min()), 2),
                    "max_c": round(float(px.max()), 2),
                    "mean_c": round(float(px.mean()), 2),
                    "shape": list(px.shape),
                }
            )
        stats = dict(src.stats())
    finally:
        src.stop()
    ok = len(got) == frames
    if not as_json:
        for g in got:
            click.echo(
                f"  frame {g['seq']}: {g['shape'][1]}×{g['shape'][0]}, die {g['die_c']} °C, "
                f"min {g['min_c']} / mean {g['mean_c']} / max {g['max_c']} °C"
            )
    detail = f"{len(got)}/{frames} frames from {cfg.thermal.port} ({cfg.thermal.driver}), link {stats.get('state')}" + (
        "" if ok else "; check the cable, thermal.port and thermal.baud (`stationctl devices list`)"
    )
    _verdict(obj, "thermal", ok, detail, as_json, frames=got, stats=stats)


@test.command("camera")
@click.option("--save", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Write the frame as JPEG here")
@click.option("--timeout", type=click.FloatRange(0.5, 60), default=5.0, show_default=True)
@click.option("--force", is_flag=True, help="Even while the daemon runs (it holds the camera)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def test_camera(obj: Ctx, save: Path | None, timeout: float, force: bool, as_json: bool) -> None:
    """Grab one frame from camera.device (size, brightness; --save to look at it)."""
    from station.app import build_camera

    _refuse_if_daemon(obj, "camera", force)
    cfg = obj.load()
    if cfg.camera.device.startswith("/dev/") and not Path(cfg.camera.device).exists():
        _verdict(obj, "camera", False, f"{cfg.camera.device} does not exist; see `stationctl devices list`", as_json)
    cam = build_camera(cfg)
    frame = None
    try:
        try:
            cam.start()
        except Exception as exc:  # OpenCV/V4L2 errors come in several types: a failed test either way
            _verdict(obj, "camera", False, f"cannot open {cfg.camera.device}: {type(exc).__name__}: {exc}", as_json)
        frame = cam.read(timeout)
        stats = dict(cam.stats())
    finally:
        cam.stop()
    if frame is None:
        _verdict(obj, "camera", False, f"no frame from {cfg.camera.device} within {timeout} s", as_json, stats=stats)
    img = frame.image
    mean = float(img.mean())
    if save is not None:
        import cv2

        cv2.imwrite(str(save), img)
    ok = 2.0 < mean < 253.0  # a black or white frame: lens cap, dead sensor, or wrong exposure
    detail = (
        f"{img.shape[1]}×{img.shape[0]} frame from {cfg.camera.device}, mean brightness {mean:.0f}"
        + ("" if ok else " (all black or all white: lens cap? exposure?)")
        + (f", saved to {save}" if save else "")
    )
    _verdict(obj, "camera", ok, detail, as_json, width=img.shape[1], height=img.shape[0], mean=round(mean, 1), stats=stats)


@test.command("qr")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def test_qr(obj: Ctx, as_json: bool) -> None:
    """Generate a QR code, render it into a camera-sized frame and decode it with the configured reader."""
    import io

    import cv2
    import numpy as np
    import segno

    from station.app import build_reader

    cfg = obj.load()
    payload = f"CHECKPOINT-SELFTEST-{int(time.time())}"
    buf = io.BytesIO()
    segno.make(payload, error="m").save(buf, kind="png", scale=6, border=4)
    qr = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_COLOR)
    if qr is None:
        _verdict(obj, "qr", False, "cannot render the test code (segno PNG not decodable by OpenCV)", as_json)
    frame = np.full((cfg.camera.height, cfg.camera.width, 3), 180, np.uint8)  # grey "scene" around it
    h, w = qr.shape[:2]
    scale = min(1.0, 0.8 * min(frame.shape[0] / h, frame.shape[1] / w))
    if scale < 1.0:
        qr = cv2.resize(qr, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_NEAREST)
        h, w = qr.shape[:2]
    y, x = (frame.shape[0] - h) // 2, (frame.shape[1] - w) // 2
    frame[y : y + h, x : x + w] = qr
    reader = build_reader(cfg)
    t0 = time.perf_counter()
    codes = reader.decode(frame)
    ms = (time.perf_counter() - t0) * 1000
    found = [c.payload.decode("utf-8", "replace") for c in codes]
    ok = payload in found
    detail = f"{cfg.codes.reader} decoded {len(found)} code(s) in {ms:.1f} ms" + ("" if ok else f"; expected {payload!r}, got {found!r}")
    _verdict(obj, "qr", ok, detail, as_json, payload=payload, decoded=found, ms=round(ms, 1))


ASTRONAUT = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"


@test.command("detector")
@click.option(
    "--image",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Default: the bundled astronaut photo (one face)",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def test_detector(obj: Ctx, image: Path | None, as_json: bool) -> None:
    """Run the configured face model on a photo with one face; pass if it finds a face."""
    import cv2

    from station.app import build_detector

    cfg = obj.load()
    path = image or ASTRONAUT
    img = cv2.imread(str(path))
    if img is None:
        click.echo(f"cannot read {path}", err=True)
        sys.exit(2)
    detector = build_detector(cfg)
    state = str(getattr(detector, "state", "ok"))
    warm_ms = detector.warm_up()
    t0 = time.perf_counter()
    faces = detector.detect(img)
    ms = (time.perf_counter() - t0) * 1000
    ok = state == "ok" and len(faces) >= 1
    boxes = [
        {"box": [round(f.box.x1), round(f.box.y1), round(f.box.x2), round(f.box.y2)], "score": round(float(f.score), 3)} for f in faces
    ]
    detail = (
        f"{getattr(detector, 'name', cfg.detector.face)}: {len(faces)} face(s) in {path.name}, {ms:.1f} ms "
        f"(warm-up {warm_ms:.0f} ms)" + ("" if state == "ok" else f"; detector {state}")
    )
    _verdict(obj, "detector", ok, detail, as_json, faces=boxes, ms=round(ms, 1), state=state)
