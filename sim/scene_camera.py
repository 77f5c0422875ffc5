"""Film the demo scene: the visible camera renders the shared director (one person, or a queue) as 640×480 BGR frames.

The thermal emulator renders the same ``SceneState`` as heat, so what the face detector and the
QR reader see here is the person the thermal pipeline measures. Frames are paced in real time like
a camera's: a consumer that falls behind gets the newest frame and the missed ones are counted as
dropped, never queued.

The rendering has to be good enough for the real detectors, not just for people: the face is a real
photograph (``station/assets/astronaut.jpg``, the self-test photo the product ships) scaled so that
UltraFace's box lands on ``state.face_box``, and the phone shows a real QR code (segno) with modules
large enough for ZBar at 640×480. Everything that depends only on the person and the face size is
rendered once and cached, so a frame costs a background copy, sensor noise and one or two alpha blends.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import segno

import station
from sim.scene import QueueDirector, SceneDirector, ScenePerson, SceneState
from station.domain.model import Box, CodeColour, VisibleFrame

log = logging.getLogger("station.camera")

ASSETS_DIR = Path(station.__file__).resolve().parent / "assets"  # the self-test photo the product ships
FACE_PHOTO = ASSETS_DIR / "astronaut.jpg"

# Where UltraFace puts the face box in station/assets/astronaut.jpg (256×320 px), as (x1, y1, x2, y2).
# Calibrated once by running the RFB-320 and RFB-640 models on the photo alone and pasted into a
# 640×480 frame; the four boxes agreed to within ±6 px and this is their rounded mean. The photo
# is scaled (uniformly, to keep the face's proportions) so that this rectangle's centre lands on
# the centre of ``state.face_box`` and its area matches the box's area.
PHOTO_FACE_RECT = (83.0, 64.0, 174.0, 174.0)
# The part of the photo that is pasted: the union of two ellipses (centre x, centre y, half-width,
# half-height in photo pixels), one around the hair and one around the face down to the chin,
# feathered so the edge fades into the rendered background instead of showing the studio backdrop
# and the spacesuit's neck ring.
PHOTO_HEAD_ELLIPSES = ((128.0, 82.0, 74.0, 70.0), (129.0, 128.0, 43.0, 54.0))
# A patch of cheek and neck skin in the photo, used to colour the rendered neck and hand.
PHOTO_SKIN_PATCH = (95, 150, 150, 168)  # x1, y1, x2, y2

# Health-code app colours (BGR): modules and banner on a white screen.
CODE_COLOURS_BGR: dict[CodeColour | None, tuple[int, int, int]] = {
    CodeColour.GREEN: (60, 150, 0),
    CodeColour.YELLOW: (0, 175, 245),
    CodeColour.RED: (40, 40, 215),
    None: (40, 40, 40),
}
CLOTHING_BGR = [(95, 55, 35), (110, 110, 112), (45, 35, 125), (50, 105, 95), (120, 105, 25), (150, 175, 195)]

QR_MODULE_PX = 4  # ZBar reads 3 px modules on a clean frame; 4 leaves margin for noise and tilt
QR_MIN_MODULE_PX = 3
QR_QUIET_MODULES = 3
PHONE_MAX_SIDE_FRACTION = 0.42  # of the frame width: the QR is sized down before the phone grows past this


@dataclass(frozen=True, slots=True)
class _Layer:
    """A pre-rendered sprite: colour, alpha (0..1) and its complement, ready for ``cv2.blendLinear``."""

    bgr: np.ndarray
    alpha: np.ndarray
    inv_alpha: np.ndarray

    @classmethod
    def from_mask(cls, bgr: np.ndarray, alpha: np.ndarray) -> _Layer:
        a = np.ascontiguousarray(alpha, dtype=np.float32)
        return cls(np.ascontiguousarray(bgr), a, np.ascontiguousarray(1.0 - a))


def _blend(frame: np.ndarray, layer: _Layer, x: int, y: int) -> None:
    """Alpha-blend ``layer`` onto ``frame`` with its top-left corner at (x, y), clipped to the frame."""
    fh, fw = frame.shape[:2]
    lh, lw = layer.bgr.shape[:2]
    x1, y1, x2, y2 = max(0, x), max(0, y), min(fw, x + lw), min(fh, y + lh)
    if x2 <= x1 or y2 <= y1:
        return
    sx, sy = x1 - x, y1 - y
    w, h = x2 - x1, y2 - y1
    roi = frame[y1:y2, x1:x2]
    roi[:] = cv2.blendLinear(
        np.ascontiguousarray(layer.bgr[sy : sy + h, sx : sx + w]),
        np.ascontiguousarray(roi),
        np.ascontiguousarray(layer.alpha[sy : sy + h, sx : sx + w]),
        np.ascontiguousarray(layer.inv_alpha[sy : sy + h, sx : sx + w]),
    )


def qr_matrix(payload: bytes) -> np.ndarray:
    """Return the QR symbol for ``payload`` (error correction M) as a boolean module matrix, no quiet zone."""
    qr = segno.make(payload, error="m", micro=False)
    return np.array([list(row) for row in qr.matrix], dtype=bool)


def render_qr(modules: np.ndarray, colour_bgr: tuple[int, int, int], module_px: int, quiet_modules: int) -> np.ndarray:
    """Return a QR code as a BGR image: modules in ``colour_bgr`` on white, with a quiet zone."""
    padded = np.pad(modules, quiet_modules)
    padded = np.repeat(np.repeat(padded, module_px, axis=0), module_px, axis=1)
    img = np.full((*padded.shape, 3), 255, dtype=np.uint8)
    img[padded] = colour_bgr
    return img


class SceneRenderer:
    """Render ``SceneState``s as BGR images; not thread-safe (one camera owns one renderer)."""

    def __init__(self, size: tuple[int, int] = (640, 480), seed: int | None = None, cache_size: int = 32) -> None:
        self.size = size
        self._rng = np.random.default_rng(seed)
        self._background = self._render_background()
        # Sensor noise of ±3 levels: a few pre-drawn frames cycled at random cost two saturating adds.
        self._noise = [self._rng.integers(0, 7, size=(size[1], size[0], 3), dtype=np.uint8) for _ in range(8)]
        self._noise_offset = np.full((size[1], size[0], 3), 3, dtype=np.uint8)
        photo = cv2.imread(str(FACE_PHOTO), cv2.IMREAD_COLOR)
        if photo is None:
            raise FileNotFoundError(f"scene face photo missing or unreadable: {FACE_PHOTO}")
        self._photo: np.ndarray = photo
        self._head_alpha = self._photo_mask()
        self._looks: dict[int, tuple[np.ndarray, tuple[int, int, int]]] = {}
        self._bodies: OrderedDict[tuple[int, int, int, int], _Layer] = OrderedDict()
        self._phones: dict[tuple[int, bytes, CodeColour | None], _Layer] = {}
        self._cache_size = cache_size

    # -- static parts -------------------------------------------------------------------------
    def _render_background(self) -> np.ndarray:
        """Draw an indoor entrance: plaster wall, skirting, tiled floor, an open door frame, a sign."""
        w, h = self.size
        horizon = int(h * 0.70)
        img = np.zeros((h, w, 3), dtype=np.float32)
        wall_top, wall_bottom = np.array([206, 212, 216], np.float32), np.array([178, 188, 196], np.float32)
        ramp = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
        img[:horizon] = wall_top + (wall_bottom - wall_top) * ramp
        floor_near, floor_far = np.array([96, 108, 122], np.float32), np.array([132, 142, 152], np.float32)
        ramp = np.linspace(0.0, 1.0, h - horizon, dtype=np.float32)[:, None, None]
        img[horizon:] = floor_far + (floor_near - floor_far) * ramp
        plaster = cv2.GaussianBlur(self._rng.normal(0.0, 6.0, size=(h, w)).astype(np.float32), (0, 0), 1.6)
        img += plaster[:, :, None]
        img = np.clip(img, 0, 255).astype(np.uint8)

        # Floor tiles converging on the vanishing point straight ahead.
        vx, vy = w // 2, int(h * 0.42)
        for k in range(-8, 9):
            x_bottom = w // 2 + k * w // 6
            t = (horizon - vy) / float(h - vy)
            x_top = int(vx + (x_bottom - vx) * t)
            cv2.line(img, (x_top, horizon), (x_bottom, h), (86, 96, 108), 1, cv2.LINE_AA)
        for y in (horizon + 14, horizon + 36, horizon + 70, horizon + 120):
            if y < h:
                cv2.line(img, (0, y), (w, y), (88, 98, 110), 1, cv2.LINE_AA)
        cv2.rectangle(img, (0, horizon - 9), (w, horizon), (72, 82, 94), -1)  # skirting board

        # An open door frame on the left with the dim corridor behind it.
        dx1, dy1, dx2 = int(w * 0.05), int(h * 0.07), int(w * 0.29)
        cv2.rectangle(img, (dx1, dy1), (dx2, horizon), (58, 78, 104), -1)
        inner = img[dy1 + 10 : horizon, dx1 + 10 : dx2 - 10].astype(np.float32)
        img[dy1 + 10 : horizon, dx1 + 10 : dx2 - 10] = np.clip(inner * 0.55 + 12.0, 0, 255).astype(np.uint8)
        cv2.line(img, (dx1 + 10, dy1 + 10), (dx1 + 10, horizon), (40, 55, 75), 2)

        # A wall sign at the top right.
        sx1, sy1 = int(w * 0.70), int(h * 0.06)
        cv2.rectangle(img, (sx1, sy1), (sx1 + 150, sy1 + 44), (150, 95, 30), -1)
        cv2.putText(img, "SHOW HEALTH", (sx1 + 8, sy1 + 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (245, 245, 245), 1, cv2.LINE_AA)
        cv2.putText(img, "CODE HERE", (sx1 + 8, sy1 + 37), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (245, 245, 245), 1, cv2.LINE_AA)

        # Lens vignetting.
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        vignette = (1.0 - 0.12 * r2)[:, :, None]
        background: np.ndarray = np.clip(img.astype(np.float32) * vignette, 0, 255).astype(np.uint8)
        return background

    def _photo_mask(self) -> np.ndarray:
        ph, pw = self._photo.shape[:2]
        mask = np.zeros((ph, pw), dtype=np.uint8)
        for cx, cy, ax, ay in PHOTO_HEAD_ELLIPSES:
            cv2.ellipse(mask, (round(cx), round(cy)), (round(ax), round(ay)), 0, 0, 360, 255, -1, cv2.LINE_AA)
        alpha: np.ndarray = cv2.GaussianBlur(mask, (0, 0), 3.5).astype(np.float32) / 255.0
        return alpha

    # -- per person ---------------------------------------------------------------------------
    def _look(self, person: ScenePerson) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Return the photo as this person looks (mirrored for odd indices, brightness varied) and their skin tone."""
        cached = self._looks.get(person.index)
        if cached is not None:
            return cached
        photo = self._photo
        if person.index % 2 == 1:
            photo = cv2.flip(photo, 1)
        gain = (0.88, 1.0, 1.1, 0.95, 1.05)[person.index % 5]
        photo = cv2.convertScaleAbs(photo, alpha=gain, beta=0)
        x1, y1, x2, y2 = PHOTO_SKIN_PATCH
        if person.index % 2 == 1:
            pw = photo.shape[1]
            x1, x2 = pw - x2, pw - x1
        skin = tuple(int(v) for v in np.median(photo[y1:y2, x1:x2].reshape(-1, 3), axis=0))
        look = (photo, (skin[0], skin[1], skin[2]))
        self._looks[person.index] = look
        return look

    def _body_layer(self, person: ScenePerson, face: Box) -> tuple[_Layer, int, int]:
        """Return the head (the photo) on a neck and shoulders, sized for ``face``, and the layer's origin."""
        fw, fh = max(4, round(face.width)), max(4, round(face.height))
        cx, cy = face.centre
        # The torso runs to the bottom of the frame and no further (layers are cached: keep them small).
        bottom = max(1, min(int(3.6 * fh), self.size[1] - round(cy) + 1))
        key = (person.index, fw, fh, bottom)
        scale = math.sqrt((fw * fh) / ((PHOTO_FACE_RECT[2] - PHOTO_FACE_RECT[0]) * (PHOTO_FACE_RECT[3] - PHOTO_FACE_RECT[1])))
        pfx = (PHOTO_FACE_RECT[0] + PHOTO_FACE_RECT[2]) / 2.0
        pfy = (PHOTO_FACE_RECT[1] + PHOTO_FACE_RECT[3]) / 2.0
        # Layer coordinates are relative to the face centre, so one layer serves any face position.
        half_w = int(1.6 * fw) + 2
        top = int(pfy * scale) + 2
        origin = (round(cx) - half_w, round(cy) - top)
        layer = self._bodies.get(key)
        if layer is not None:
            self._bodies.move_to_end(key)
            return layer, origin[0], origin[1]

        photo, skin = self._look(person)
        lw, lh = 2 * half_w, top + bottom
        bgr = np.zeros((lh, lw, 3), dtype=np.uint8)
        ox, oy = half_w, top  # the face centre in layer coordinates

        clothing = CLOTHING_BGR[person.index % len(CLOTHING_BGR)]
        shoulder_y = oy + int(0.78 * fh)
        torso = np.zeros((lh, lw), dtype=np.uint8)
        cv2.ellipse(torso, (ox, shoulder_y + int(0.55 * fh)), (int(1.35 * fw), int(0.6 * fh)), 0, 180, 360, 255, -1, cv2.LINE_AA)
        cv2.rectangle(torso, (ox - int(1.35 * fw), shoulder_y + int(0.55 * fh)), (ox + int(1.35 * fw), lh), 255, -1)
        neck = np.zeros((lh, lw), dtype=np.uint8)
        cv2.rectangle(neck, (ox - int(0.26 * fw), oy + int(0.2 * fh)), (ox + int(0.26 * fw), shoulder_y + int(0.2 * fh)), 255, -1)
        collar = np.zeros((lh, lw), dtype=np.uint8)
        cv2.ellipse(collar, (ox, shoulder_y + int(0.12 * fh)), (int(0.34 * fw), int(0.16 * fh)), 0, 0, 180, 255, -1, cv2.LINE_AA)
        coverage = np.zeros((lh, lw), dtype=np.uint8)
        for mask, colour in ((torso, clothing), (neck, skin), (collar, tuple(max(0, c - 35) for c in clothing))):
            bgr[mask > 0] = colour
            cv2.max(coverage, mask, dst=coverage)
        alpha = coverage.astype(np.float32) * np.float32(1.0 / 255.0)
        # Shade the torso towards its edges so it reads as a body, not a flat sticker.
        shade = 1.0 - 0.25 * np.abs(np.linspace(-1.0, 1.0, lw, dtype=np.float32))
        bgr = np.clip(bgr.astype(np.float32) * shade[None, :, None], 0, 255).astype(np.uint8)

        head = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        head_a = cv2.resize(self._head_alpha, (head.shape[1], head.shape[0]), interpolation=cv2.INTER_LINEAR)
        if person.index % 2 == 1:
            head_a = cv2.flip(head_a, 1)
            face_x = head.shape[1] - pfx * scale
        else:
            face_x = pfx * scale
        hx, hy = round(ox - face_x), round(oy - pfy * scale)
        x1, y1 = max(0, hx), max(0, hy)
        x2, y2 = min(lw, hx + head.shape[1]), min(lh, hy + head.shape[0])
        if x2 > x1 and y2 > y1:
            hs = head[y1 - hy : y2 - hy, x1 - hx : x2 - hx].astype(np.float32)
            ha = head_a[y1 - hy : y2 - hy, x1 - hx : x2 - hx][:, :, None]
            region = bgr[y1:y2, x1:x2].astype(np.float32)
            below = alpha[y1:y2, x1:x2][:, :, None]
            # Straight-alpha "over": the head's feathered edge must fade into the background where
            # there is no body under it, not into the layer's black fill.
            out_a = ha + below * (1.0 - ha)
            out_c = (hs * ha + region * below * (1.0 - ha)) / np.maximum(out_a, 1e-6)
            bgr[y1:y2, x1:x2] = np.clip(out_c, 0, 255).astype(np.uint8)
            alpha[y1:y2, x1:x2] = out_a[:, :, 0]
        layer = _Layer.from_mask(bgr, alpha)
        self._bodies[key] = layer
        if len(self._bodies) > self._cache_size:
            self._bodies.popitem(last=False)
        return layer, origin[0], origin[1]

    def _phone_layer(self, person: ScenePerson) -> _Layer:
        """Draw a phone held up to the camera showing the person's health code.

        It is held upright: ZBar misses small QR codes tilted by a few degrees often enough (a known
        pyzbar complaint) that a tilted demo phone would make the demo flaky rather than realistic.
        """
        payload = person.code_payload or b""
        key = (person.index, payload, person.code_colour)
        cached = self._phones.get(key)
        if cached is not None:
            return cached
        colour = CODE_COLOURS_BGR.get(person.code_colour, CODE_COLOURS_BGR[None])
        _, skin = self._look(person)
        modules = qr_matrix(payload)
        side = modules.shape[0] + 2 * QR_QUIET_MODULES
        max_qr = int(self.size[0] * PHONE_MAX_SIDE_FRACTION)
        module_px = QR_MODULE_PX if side * QR_MODULE_PX <= max_qr else max(1, max_qr // side)
        if module_px < QR_MIN_MODULE_PX:
            log.warning("health-code payload too long to render readably", extra={"bytes": len(payload)})
        qr = render_qr(modules, colour, module_px, QR_QUIET_MODULES)
        qs = qr.shape[0]
        bezel, banner_h, footer_h = 10, 34, 30
        screen_w, screen_h = qs + 8, banner_h + qs + footer_h
        pw, ph = screen_w + 2 * bezel, screen_h + 2 * bezel + 16
        pad = 24  # room for the hand around the phone
        lw, lh = pw + 2 * pad, ph + 2 * pad
        bgr = np.zeros((lh, lw, 3), dtype=np.uint8)
        mask = np.zeros((lh, lw), dtype=np.uint8)
        px, py = pad, pad
        # Hand behind the lower half of the phone.
        cv2.ellipse(bgr, (px + pw // 2, py + int(ph * 0.82)), (pw // 2 + 12, int(ph * 0.2)), 0, 0, 360, skin, -1, cv2.LINE_AA)
        cv2.ellipse(mask, (px + pw // 2, py + int(ph * 0.82)), (pw // 2 + 12, int(ph * 0.2)), 0, 0, 360, 255, -1, cv2.LINE_AA)
        _rounded_rect(bgr, (px, py, px + pw, py + ph), 14, (38, 36, 34))
        _rounded_rect(mask, (px, py, px + pw, py + ph), 14, 255)
        sx, sy = px + bezel, py + bezel + 8
        bgr[sy : sy + screen_h, sx : sx + screen_w] = (250, 250, 250)
        bgr[sy : sy + banner_h, sx : sx + screen_w] = colour
        label = "HEALTH CODE" if person.code_colour is not None else "QR CODE"
        cv2.putText(bgr, label, (sx + 8, sy + 23), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        bgr[sy + banner_h : sy + banner_h + qs, sx + 4 : sx + 4 + qs] = qr
        status = person.code_colour.value.upper() if person.code_colour is not None else "CODE"
        cv2.putText(bgr, status, (sx + 8, sy + banner_h + qs + 21), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        layer = _Layer.from_mask(bgr, mask.astype(np.float32) / 255.0)
        self._phones[key] = layer
        if len(self._phones) > self._cache_size:
            self._phones.pop(next(iter(self._phones)))
        return layer

    def _phone_origin(self, person: ScenePerson, face: Box, layer: _Layer) -> tuple[int, int]:
        """Return where the phone goes: beside the face, on the side of the hand that holds it, inside the frame."""
        w, h = self.size
        lh, lw = layer.bgr.shape[:2]
        gap = 0.06 * face.width
        x = face.x1 - gap - lw + 24 if person.index % 2 == 1 else face.x2 + gap - 24
        y = face.centre[1] - 0.25 * lh
        x = min(max(x, -24), w - lw + 24)
        y = min(max(y, -24), h - lh + 24)
        return round(x), round(y)

    # -- frames -------------------------------------------------------------------------------
    def render(self, state: SceneState) -> np.ndarray:
        """Return the frame for ``state``: background, sensor noise, everyone in view and their phones."""
        frame = self._background.copy()
        for view in state.views():  # farthest first: nearer people are drawn over them
            person = view.person
            body, bx, by = self._body_layer(person, view.face_box)
            _blend(frame, body, bx, by)
            if view.showing_code and person.code_payload is not None:
                phone = self._phone_layer(person)
                px, py = self._phone_origin(person, view.face_box, phone)
                _blend(frame, phone, px, py)
        noise = self._noise[self._rng.integers(0, len(self._noise))]
        cv2.add(frame, noise, dst=frame)
        cv2.subtract(frame, self._noise_offset, dst=frame)
        return frame


def _rounded_rect(img: np.ndarray, rect: tuple[int, int, int, int], r: int, colour: int | tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = rect
    cv2.rectangle(img, (x1 + r, y1), (x2 - r, y2), colour, -1)
    cv2.rectangle(img, (x1, y1 + r), (x2, y2 - r), colour, -1)
    for cx, cy in ((x1 + r, y1 + r), (x2 - r, y1 + r), (x1 + r, y2 - r), (x2 - r, y2 - r)):
        cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)


class SceneCamera:
    """``FrameSource`` that films the demo scene at ``fps`` in real time.

    ``clock`` must be the director's clock: frame times are passed to ``director.state``.
    """

    name = "scene-camera"

    def __init__(
        self,
        director: SceneDirector | QueueDirector,
        fps: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.director = director
        self.fps = float(fps)
        self._period = 1.0 / self.fps
        self._clock = clock
        self.renderer = SceneRenderer(director.geometry.visible_size, seed=seed)
        self._stopping = threading.Event()
        self._t0: float | None = None
        self._next_slot = 0
        self._frames = 0
        self._dropped = 0
        self._render_ms_total = 0.0
        self._render_ms_last = 0.0
        self._state = "stopped"

    def start(self) -> None:
        """Start filming: frame times count from now."""
        self._stopping.clear()
        self._t0 = self._clock()
        self._next_slot = 0
        self._state = "running"
        log.info("scene camera started", extra={"fps": self.fps, "size": self.renderer.size})

    def stop(self) -> None:
        """Stop filming; a ``read`` waiting for its frame time returns None."""
        self._stopping.set()
        if self._state == "running":
            self._state = "stopped"
            log.info("scene camera stopped", extra={"frames": self._frames, "dropped": self._dropped})

    def render(self, state: SceneState) -> np.ndarray:
        """Render one frame for ``state`` outside the real-time pacing (previews, tools)."""
        return self.renderer.render(state)

    def read(self, timeout: float) -> VisibleFrame | None:
        """Wait for the next frame time and render it; None on timeout, stop, or when the scene is over."""
        if self._t0 is None:
            raise RuntimeError("scene camera was never started")
        if self._stopping.is_set():
            return None
        now = self._clock()
        if self.director.finished(now):
            self._state = "finished"
            return None
        slot_t = self._t0 + self._next_slot * self._period
        if slot_t > now:
            if slot_t - now > timeout:
                self._stopping.wait(max(0.0, timeout))
                return None
            if self._stopping.wait(slot_t - now):
                return None
            now = self._clock()
        # A consumer that fell behind gets the newest frame; the frames it missed are dropped.
        latest = max(self._next_slot, math.floor((now - self._t0) / self._period + 1e-9))
        self._dropped += latest - self._next_slot
        t = self._t0 + latest * self._period
        self._next_slot = latest + 1
        state = self.director.state(t)
        t_render = time.perf_counter()
        image = self.renderer.render(state)
        self._render_ms_last = (time.perf_counter() - t_render) * 1000.0
        self._render_ms_total += self._render_ms_last
        self._frames += 1
        return VisibleFrame(image=image, seq=latest, t=t)

    def stats(self) -> Mapping[str, int | float | str]:
        """Return the camera's state, frame and drop counts, and render times."""
        frames = self._frames
        return {
            "state": self._state,
            "frames": frames,
            "frames_dropped": self._dropped,
            "fps": self.fps,
            "render_ms_last": round(self._render_ms_last, 2),
            "render_ms_avg": round(self._render_ms_total / frames, 2) if frames else 0.0,
        }
