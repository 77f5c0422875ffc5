"""Rendered phone-screen frames for the QR benchmark and tests (``bench/qr.py``).

Each scene is a 640×480 BGR camera frame with zero, one or several phones showing a QR code, and
the exact payloads a reader should find. The geometry is physical rather than "a code pasted on a
picture": a pinhole camera of 62° horizontal field of view (a Pi camera v2 at 640 px: f ≈ 530 px),
phones 6.8 × 14.5 cm whose QR symbol is 5 cm wide (what health-code apps show), held 0.3–0.8 m
away and turned by yaw / pitch / roll, projected with a homography. The frame is rendered at twice
the resolution and area-downsampled, like a sensor integrating light, then optical blur, sensor
noise and MJPEG compression are applied.

Conditions (each scene has one main tag, some have several):

- ``clean``: 0.3–0.6 m, a few degrees of tilt;
- ``angle``: yaw / pitch 25–50°, any roll;
- ``blur``: defocus (Gaussian σ 1.0–1.8 px) or hand motion (a 5–9 px line kernel);
- ``glare``: a specular highlight on the screen glass covering part of the symbol;
- ``moire``: interference fringes of the screen's pixel grid with the sensor's (simulated as a
  sinusoidal intensity pattern of 2.5–6 px period over the screen, 15–35 % deep);
- ``far``: 0.6–0.8 m, so modules are 1–2 px wide;
- ``inverted``: dark-mode screens, light modules on a dark background;
- ``multi``: two or three phones in view;
- ``none``: no code (clutter, a phone showing text, blocky patterns): a reader must find nothing.

Printed paper codes (纸质健康码, :func:`render_paper_scene`): a signed code printed on an A6 sheet
held up by a person without a smartphone. No screen glow: the sheet only reflects the room's light
(0.55–0.85 of a lit screen), the paper is slightly grey and grainy, the toner grey rather than black
(lower contrast), and printing spreads each module a little. Three conditions:

- ``matte``: the sheet held flat;
- ``curled``: bent around a vertical axis like a sheet taken out of a pocket (radius 6–12 cm),
  shaded by the angle of each part to the light;
- ``folded``: a crease near the code (8–20° between the two halves), one half darker than the
  other (a brightness step of 10–25 %) and a thin shadow along the crease.

Payloads are of the two kinds the gate sees: an HC1-like signed container (``HC1:`` + ~210
Base45 characters → QR version 8, 49 modules) and a short online token (version 3, 29 modules).
Deterministic for a seed. Nothing here ships with the product: it is bench and test material.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import segno

FRAME = (640, 480)
SS = 2  # supersampling factor of the render canvas
FOCAL_PX = 985.0  # 640 px across a 36° field of view: a lens chosen for the code/face zone at 0.3–0.8 m
QR_SIDE_M = 0.055  # the symbol without its quiet zone
PHONE_W_M, PHONE_H_M = 0.068, 0.145
QUIET_MODULES = 2  # apps leave a narrow margin; the screen around it is the rest of the quiet zone

CONDITIONS = ("clean", "angle", "blur", "glare", "moire", "far", "inverted", "multi", "none")
PAPER_CONDITIONS = ("matte", "curled", "folded")
PAPER_W_M, PAPER_H_M = 0.105, 0.148  # A6, the size of a printed health-code slip
BASE45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
# BGR module colours of the health-code apps (and plain black).
MODULE_COLOURS = {"green": (60, 150, 0), "yellow": (0, 200, 245), "red": (30, 30, 220), "black": (20, 20, 20)}


@dataclass(frozen=True)
class QrScene:
    name: str
    image: np.ndarray  # 640×480 BGR
    payloads: tuple[bytes, ...]  # what a reader should return (order free)
    tags: tuple[str, ...]
    distance_m: tuple[float, ...]  # per phone showing a code


def hc1_like_payload(rng: np.random.Generator) -> bytes:
    """Return an ``HC1:`` string of Base45 characters the length of a signed colour code (not a valid signature)."""
    n = int(rng.integers(200, 220))
    return ("HC1:" + "".join(BASE45[i] for i in rng.integers(0, len(BASE45), n))).encode("ascii")


def token_payload(rng: np.random.Generator) -> bytes:
    token = "".join("0123456789abcdefghijklmnopqrstuvwxyz"[i] for i in rng.integers(0, 36, 16))
    return f"https://hc.example.org/t/{token}".encode("ascii")


def qr_modules(payload: bytes) -> np.ndarray:
    qr = segno.make(payload, error="m", micro=False)
    return np.array([list(row) for row in qr.matrix], dtype=bool)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    rot: np.ndarray = rz @ ry @ rx
    return rot


def _background(rng: np.random.Generator, busy: bool) -> np.ndarray:
    """Draw a gate-like backdrop: smooth light field, shapes, a head-and-shoulders blob; ``busy`` adds code-like clutter."""
    w, h = FRAME
    low = rng.integers(60, 200, size=(6, 8, 3)).astype(np.uint8)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(3, 9))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(20, 200)), y + int(rng.integers(20, 160))), colour, -1)
    cx = int(rng.integers(200, 440))
    cv2.ellipse(img, (cx, 170), (60, 80), 0, 0, 360, tuple(int(c) for c in rng.integers(90, 200, 3)), -1)
    cv2.ellipse(img, (cx, 460), (170, 130), 0, 180, 360, tuple(int(c) for c in rng.integers(20, 120, 3)), -1)
    if busy:
        # Checkerboards, stripes and text-like blocks: the shapes that fool finder-pattern searches.
        for _ in range(int(rng.integers(2, 5))):
            cell = int(rng.integers(3, 10))
            gw, gh = int(rng.integers(6, 20)), int(rng.integers(6, 20))
            pat = rng.integers(0, 2, size=(gh, gw)).astype(np.uint8) * 255
            pat = np.repeat(np.repeat(pat, cell, 0), cell, 1)
            ph, pw = pat.shape
            x, y = int(rng.integers(0, max(1, w - pw))), int(rng.integers(0, max(1, h - ph)))
            img[y : y + ph, x : x + pw] = pat[: h - y, : w - x, None]
        for _ in range(int(rng.integers(1, 4))):
            x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
            s = int(rng.integers(14, 40))
            cv2.rectangle(img, (x, y), (x + s, y + s), (0, 0, 0), -1)
            cv2.rectangle(img, (x + s // 7, y + s // 7), (x + s - s // 7, y + s - s // 7), (255, 255, 255), -1)
            cv2.rectangle(img, (x + 2 * s // 7, y + 2 * s // 7), (x + s - 2 * s // 7, y + s - 2 * s // 7), (0, 0, 0), -1)
    return cv2.resize(img, (w * SS, h * SS), interpolation=cv2.INTER_LINEAR)


def _phone_texture(
    payload: bytes | None, colour: str, dark: bool, module_px: int, rng: np.random.Generator
) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Draw the phone's screen and bezel; return the image, its pixels per metre, and where the QR centre is (px)."""
    if payload is not None:
        modules = qr_modules(payload)
        n = modules.shape[0]
    else:
        modules, n = None, 29
    ppm = module_px * n / QR_SIDE_M
    tw, th = int(round(PHONE_W_M * ppm)), int(round(PHONE_H_M * ppm))
    bezel = max(2, int(0.004 * ppm))
    screen_bg = (35, 35, 38) if dark else (250, 250, 250)
    tex = np.full((th, tw, 3), 15, np.uint8)
    cv2.rectangle(tex, (bezel, bezel), (tw - bezel - 1, th - bezel - 1), screen_bg, -1)
    accent = MODULE_COLOURS[colour]
    # App header in the code's colour, then a few lines of text under the code.
    cv2.rectangle(tex, (bezel, bezel), (tw - bezel - 1, bezel + int(0.018 * ppm)), accent, -1)
    qx = tw / 2.0
    qy = bezel + 0.025 * ppm + QR_SIDE_M * ppm / 2.0
    text_colour = (200, 200, 200) if dark else (60, 60, 60)
    y = int(qy + QR_SIDE_M * ppm / 2.0 + 0.012 * ppm)
    line_h = max(2, int(0.004 * ppm))
    while y < th - bezel - 0.012 * ppm:
        x2 = int(bezel + 0.006 * ppm + rng.uniform(0.3, 0.85) * (tw - 2 * bezel - 0.012 * ppm))
        cv2.rectangle(tex, (int(bezel + 0.006 * ppm), y), (x2, y + line_h), text_colour, -1)
        y += int(0.009 * ppm)
    if modules is not None:
        padded = np.pad(modules, QUIET_MODULES)
        big = np.repeat(np.repeat(padded, module_px, 0), module_px, 1)
        side = big.shape[0]
        x0, y0 = int(round(qx - side / 2.0)), int(round(qy - side / 2.0))
        # Dark mode: light modules (white, or a light tint of the colour) on the dark screen.
        on = (235, 235, 235) if colour == "black" else tuple(int(min(255, 0.4 * c + 150)) for c in accent)
        region = tex[y0 : y0 + side, x0 : x0 + side]
        if dark:
            region[:] = screen_bg
            region[big] = on
        else:
            region[:] = (255, 255, 255)
            region[big] = accent
    return tex, ppm, (qx, qy)


def _place_phone(
    canvas: np.ndarray,
    tex: np.ndarray,
    ppm: float,
    qr_centre_px: tuple[float, float],
    centre_frame: tuple[float, float],
    distance: float,
    yaw: float,
    pitch: float,
    roll: float,
    brightness: float,
) -> np.ndarray:
    """Project the phone onto the supersampled canvas; returns the phone's mask on the canvas."""
    th, tw = tex.shape[:2]
    f = FOCAL_PX * SS
    cx, cy = canvas.shape[1] / 2.0, canvas.shape[0] / 2.0
    X = (centre_frame[0] * SS - cx) * distance / f
    Y = (centre_frame[1] * SS - cy) * distance / f
    rot = _rotation(yaw, pitch, roll)
    src, dst = [], []
    for u, v in ((0, 0), (tw, 0), (tw, th), (0, th)):
        p = np.array([(u - qr_centre_px[0]) / ppm, (v - qr_centre_px[1]) / ppm, 0.0])
        q = rot @ p + np.array([X, Y, distance])
        src.append((u, v))
        dst.append((f * q[0] / q[2] + cx, f * q[1] / q[2] + cy))
    H = cv2.getPerspectiveTransform(np.array(src, dtype=np.float32), np.array(dst, dtype=np.float32))
    size = (canvas.shape[1], canvas.shape[0])
    lit = np.clip(tex.astype(np.float32) * brightness, 0, 255).astype(np.uint8)
    warped = cv2.warpPerspective(lit, H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask = cv2.warpPerspective(np.full((th, tw), 255, np.uint8), H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    a = (mask.astype(np.float32) / 255.0)[:, :, None]
    canvas[:] = (canvas * (1.0 - a) + warped * a).astype(np.uint8)
    return mask


def _glare(canvas: np.ndarray, mask: np.ndarray, centre: tuple[float, float], rng: np.random.Generator, strength: float) -> None:
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx = centre[0] * SS + rng.uniform(-25, 25) * SS
    gy = centre[1] * SS + rng.uniform(-25, 25) * SS
    sx, sy = rng.uniform(12, 30) * SS, rng.uniform(6, 18) * SS
    t = rng.uniform(0, math.pi)
    dx, dy = xx - gx, yy - gy
    u = dx * math.cos(t) + dy * math.sin(t)
    v = -dx * math.sin(t) + dy * math.cos(t)
    blob = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2)) * strength * (mask.astype(np.float32) / 255.0)
    canvas[:] = np.clip(canvas.astype(np.float32) + blob[:, :, None] * 255.0, 0, 255).astype(np.uint8)


def _moire(canvas: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> None:
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(2.5, 6.0) * SS
    t = rng.uniform(0, math.pi)
    depth = rng.uniform(0.15, 0.35)
    phase = (xx * math.cos(t) + yy * math.sin(t)) * (2 * math.pi / period)
    fringe = 1.0 - depth * (0.5 + 0.5 * np.sin(phase)) * (mask.astype(np.float32) / 255.0)
    # Colour fringes: the three subpixels beat at slightly different phases.
    out = canvas.astype(np.float32)
    for c, shift in enumerate((0.0, 0.7, 1.4)):
        out[:, :, c] *= 1.0 - depth * (0.5 + 0.5 * np.sin(phase + shift)) * (mask.astype(np.float32) / 255.0) if c else fringe
    canvas[:] = np.clip(out, 0, 255).astype(np.uint8)


def _camera(canvas: np.ndarray, rng: np.random.Generator, blur: str | None) -> np.ndarray:
    img = cv2.resize(canvas, FRAME, interpolation=cv2.INTER_AREA)
    img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 0.7))  # lens
    if blur == "defocus":
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(1.0, 1.8))
    elif blur == "motion":
        k = int(rng.integers(5, 10))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2, :] = 1.0 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = np.asarray(cv2.warpAffine(kernel, rot, (k, k)), dtype=np.float32)  # already float32: no copy
        kernel /= max(kernel.sum(), 1e-6)
        img = cv2.filter2D(img, -1, kernel)
    noisy = img.astype(np.float32) + rng.normal(0.0, rng.uniform(1.5, 4.0), img.shape)
    img = np.clip(noisy, 0, 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 93))])
    decoded = cv2.imdecode(jpg, cv2.IMREAD_COLOR)
    assert ok and decoded is not None
    return decoded


def render_scene(index: int, condition: str, seed: int = 5, *, distance_m: float | None = None, payload: bytes | None = None) -> QrScene:
    """Return one frame for ``condition`` (see the module doc); the same arguments give the same frame.

    ``distance_m`` and ``payload`` replace the drawn distance and payload of every phone (the
    paper/phone comparison holds both at the same distances with the same codes); the random
    draws are made all the same, so the rest of the scene does not change.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}")
    rng = np.random.default_rng([seed, index, CONDITIONS.index(condition)])
    tags = [condition]
    canvas = _background(rng, busy=condition == "none" or rng.random() < 0.2)
    n_phones = int(rng.integers(2, 4)) if condition == "multi" else 1
    if condition == "none":
        n_phones = int(rng.integers(0, 2))  # sometimes a phone showing text, no code
    payload_for = payload
    payloads: list[bytes] = []
    distances: list[float] = []
    # Phones in separate horizontal slots so they do not overlap.
    slots = np.linspace(0, FRAME[0], n_phones + 1)
    for k in range(n_phones):
        has_code = condition != "none"
        drawn = (hc1_like_payload(rng) if rng.random() < 0.5 else token_payload(rng)) if has_code else None
        payload = payload_for if payload_for is not None and drawn is not None else drawn
        colour = str(rng.choice(list(MODULE_COLOURS)))
        dark = condition == "inverted" or (condition == "multi" and rng.random() < 0.25)
        if condition == "far":
            distance = float(rng.uniform(0.6, 0.8))
        elif condition == "multi":
            distance = float(rng.uniform(0.35, 0.6))
        else:
            distance = float(rng.uniform(0.3, 0.6))
        if distance_m is not None:
            distance = distance_m
        if condition == "angle":
            yaw, pitch = math.radians(rng.uniform(25, 50)) * rng.choice([-1, 1]), math.radians(rng.uniform(0, 35)) * rng.choice([-1, 1])
            if rng.random() < 0.5:
                yaw, pitch = pitch, yaw
            roll = math.radians(rng.uniform(-180, 180))
        else:
            yaw, pitch, roll = (math.radians(rng.uniform(-12, 12)), math.radians(rng.uniform(-12, 12)), math.radians(rng.uniform(-15, 15)))
        n_modules = (qr_modules(payload).shape[0] if payload is not None else 29) + 2 * QUIET_MODULES
        canvas_module_px = FOCAL_PX * SS * QR_SIDE_M / distance / (n_modules - 2 * QUIET_MODULES)
        module_px = max(2, int(math.ceil(canvas_module_px)))
        tex, ppm, qc = _phone_texture(payload, colour, dark, module_px, rng)
        half_code = FOCAL_PX * QR_SIDE_M / distance * 0.75
        lo, hi = slots[k] + half_code, slots[k + 1] - half_code
        x = float(rng.uniform(lo, hi)) if hi > lo else float((slots[k] + slots[k + 1]) / 2)
        y = float(rng.uniform(half_code + 10, FRAME[1] - half_code - 10))
        brightness = float(rng.uniform(0.8, 1.1))
        mask = _place_phone(canvas, tex, ppm, qc, (x, y), distance, yaw, pitch, roll, brightness)
        if condition == "glare":
            _glare(canvas, mask, (x, y), rng, float(rng.uniform(0.5, 0.9)))
        if condition == "moire":
            _moire(canvas, mask, rng)
        if payload is not None:
            payloads.append(payload)
            distances.append(round(distance, 3))
    blur = str(rng.choice(["defocus", "motion"])) if condition == "blur" else None
    image = _camera(canvas, rng, blur)
    if blur:
        tags.append(blur)
    return QrScene(f"{condition}-{index:03d}", image, tuple(payloads), tuple(tags), tuple(distances))


def scene_set(per_condition: int = 24, seed: int = 5) -> list[QrScene]:
    """``per_condition`` frames of every condition, in a fixed order."""
    return [render_scene(i, c, seed) for c in CONDITIONS for i in range(per_condition)]


def _paper_texture(payload: bytes, module_px: int, rng: np.random.Generator) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Draw the printed sheet: grey grainy paper, grey toner, a title and text lines; return it, pixels per metre and the QR centre."""
    modules = qr_modules(payload)
    n = modules.shape[0]
    ppm = module_px * n / QR_SIDE_M
    tw, th = int(round(PAPER_W_M * ppm)), int(round(PAPER_H_M * ppm))
    paper = np.array([rng.uniform(196, 232)] * 3) * np.array([rng.uniform(0.93, 0.99), rng.uniform(0.97, 1.0), 1.0])  # warm grey
    tex = np.empty((th, tw, 3), np.float32)
    tex[:] = paper
    ink = float(rng.uniform(35, 75))
    toner = (ink, ink, ink) if rng.random() < 0.7 else (ink + 10, ink + 70, ink)  # black, or a printed green
    qx, qy = tw / 2.0, 0.045 * ppm + QR_SIDE_M * ppm / 2.0
    cv2.rectangle(tex, (int(0.015 * ppm), int(0.012 * ppm)), (int(tw - 0.015 * ppm), int(0.02 * ppm)), toner, -1)  # title
    y = int(qy + QR_SIDE_M * ppm / 2.0 + 0.012 * ppm)
    while y < th - 0.015 * ppm:
        x2 = int(0.015 * ppm + rng.uniform(0.3, 0.9) * (tw - 0.03 * ppm))
        cv2.rectangle(tex, (int(0.015 * ppm), y), (x2, y + max(2, int(0.003 * ppm))), toner, -1)
        y += int(0.008 * ppm)
    padded = np.pad(modules, QUIET_MODULES + 2)  # a printed code keeps a wider white margin than an app
    big = np.repeat(np.repeat(padded, module_px, 0), module_px, 1)
    side = big.shape[0]
    x0, y0 = int(round(qx - side / 2.0)), int(round(qy - side / 2.0))
    region = tex[y0 : y0 + side, x0 : x0 + side]
    region[big] = toner
    spread = np.asarray(cv2.GaussianBlur(tex, (0, 0), 0.12 * module_px), dtype=np.float32)  # toner spreads into the paper
    noise = np.asarray(cv2.GaussianBlur(rng.normal(0.0, 1.0, (th, tw)).astype(np.float32), (0, 0), max(0.6, 0.15 * module_px)))
    grain = noise * np.float32(rng.uniform(0.02, 0.045) / max(float(noise.std()), 1e-6))
    return np.clip(spread * (1.0 + grain)[:, :, None], 0, 255).astype(np.uint8), ppm, (qx, qy)


def _sheet_points(u: np.ndarray, shape: tuple[str, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Map sheet coordinates ``u`` (metres across, from the QR centre) to (x, z) of the bent sheet.

    ``shape`` is ("flat" | "curl" | "fold", parameter, position): the curl's radius around a
    vertical axis at ``position``, or the fold's angle (radians) along a vertical crease at it.
    """
    kind, param, at = shape
    if kind == "curl":
        theta = (u - at) / param
        return at + param * np.sin(theta), param * (1.0 - np.cos(theta))
    if kind == "fold":
        beyond = np.maximum(u - at, 0.0)
        return np.minimum(u, at) + beyond * math.cos(param), beyond * math.sin(param)
    return u, np.zeros_like(u)


def _place_sheet(
    canvas: np.ndarray,
    tex: np.ndarray,
    ppm: float,
    qr_centre_px: tuple[float, float],
    centre_frame: tuple[float, float],
    distance: float,
    angles: tuple[float, float, float],
    light: float,
    shape: tuple[str, float, float],
    shade_step: float,
) -> None:
    """Project a (possibly bent) sheet onto the canvas in vertical strips, each planar, each lit by its own angle."""
    th, tw = tex.shape[:2]
    f = FOCAL_PX * SS
    cx, cy = canvas.shape[1] / 2.0, canvas.shape[0] / 2.0
    offset = np.array([(centre_frame[0] * SS - cx) * distance / f, (centre_frame[1] * SS - cy) * distance / f, distance])
    rot = _rotation(*angles)
    kind, _, at = shape
    strips = 1 if kind == "flat" else 28
    edges = np.linspace(0, tw, strips + 1)
    if kind == "fold":  # a strip edge exactly on the crease, so each half is one plane
        crease_px = at * ppm + qr_centre_px[0]
        edges = np.unique(np.concatenate([np.linspace(0, crease_px, 3), np.linspace(crease_px, tw, 3)]))
    size = (canvas.shape[1], canvas.shape[0])
    out = canvas.astype(np.float32)
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b - a < 1.0:
            continue
        ua, ub = (a - qr_centre_px[0]) / ppm, (b - qr_centre_px[0]) / ppm
        xs, zs = _sheet_points(np.array([ua, ub]), shape)
        corners = []
        for (x, z), vpx in (((xs[0], zs[0]), 0.0), ((xs[1], zs[1]), 0.0), ((xs[1], zs[1]), float(th)), ((xs[0], zs[0]), float(th))):
            q = rot @ np.array([x, (vpx - qr_centre_px[1]) / ppm, z]) + offset
            corners.append((f * q[0] / q[2] + cx, f * q[1] / q[2] + cy))
        src = np.array([(0, 0), (b - a, 0), (b - a, th), (0, th)], dtype=np.float32)
        H = cv2.getPerspectiveTransform(src, np.array(corners, dtype=np.float32))
        # How this strip faces the light (from the camera's side): its slope in the sheet.
        slope = math.atan2(float(zs[1] - zs[0]), float(xs[1] - xs[0]))
        lit = light * (0.55 + 0.45 * math.cos(slope))
        if kind == "fold" and a >= crease_px - 0.5:
            lit *= shade_step
        # One column past the strip's end (the same plane, extended) so neighbouring strips overlap: no seams.
        piece = np.ascontiguousarray(tex[:, int(a) : min(tw, int(math.ceil(b)) + 1)]).astype(np.float32) * lit
        warped = cv2.warpPerspective(piece, H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        mask = cv2.warpPerspective(np.ones(piece.shape[:2], np.float32), H, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        out = out * (1.0 - mask[:, :, None]) + warped * mask[:, :, None]
    canvas[:] = np.clip(out, 0, 255).astype(np.uint8)


def render_paper_scene(index: int, condition: str, distance_m: float, payload: bytes | None = None, seed: int = 5) -> QrScene:
    """Return one frame of a printed code at ``distance_m`` under ``condition`` (``PAPER_CONDITIONS``; module doc).

    ``payload`` is what is printed (a real signed HC1 in the tests); by default an HC1-length
    string. The same arguments give the same frame.
    """
    if condition not in PAPER_CONDITIONS:
        raise ValueError(f"unknown paper condition {condition!r}")
    rng = np.random.default_rng([seed, index, 100 + PAPER_CONDITIONS.index(condition), int(round(distance_m * 100))])
    canvas = _background(rng, busy=rng.random() < 0.2)
    payload = payload if payload is not None else hc1_like_payload(rng)
    n_modules = qr_modules(payload).shape[0]
    module_px = max(2, int(math.ceil(FOCAL_PX * SS * QR_SIDE_M / distance_m / n_modules)))
    tex, ppm, qc = _paper_texture(payload, module_px, rng)
    yaw, pitch, roll = (math.radians(rng.uniform(-15, 15)), math.radians(rng.uniform(-15, 15)), math.radians(rng.uniform(-20, 20)))
    half_code = FOCAL_PX * QR_SIDE_M / distance_m * 0.75
    x = float(rng.uniform(half_code + 10, FRAME[0] - half_code - 10))
    y = float(rng.uniform(half_code + 10, FRAME[1] - half_code - 10))
    light = float(rng.uniform(0.55, 0.85))  # reflected room light: no glow of its own
    side = float(rng.choice([-1.0, 1.0]))
    if condition == "curled":
        shape = ("curl", float(rng.uniform(0.06, 0.12)), side * float(rng.uniform(0.0, 0.02)))
    elif condition == "folded":
        shape = ("fold", math.radians(rng.uniform(8, 20)) * side, float(rng.uniform(-0.2, 0.2)) * QR_SIDE_M)
        crease = int(round(shape[2] * ppm + qc[0]))
        tex[:, max(0, crease - 1) : crease + 1] = (tex[:, max(0, crease - 1) : crease + 1] * 0.8).astype(np.uint8)  # the crease's shadow
    else:
        shape = ("flat", 0.0, 0.0)
    _place_sheet(canvas, tex, ppm, qc, (x, y), distance_m, (yaw, pitch, roll), light, shape, float(rng.uniform(0.75, 0.9)))
    image = _camera(canvas, rng, None)
    return QrScene(f"paper-{condition}-{distance_m:.1f}m-{index:03d}", image, (payload,), ("paper", condition), (round(distance_m, 3),))
