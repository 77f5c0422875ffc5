"""The live picture for the operator page: one shared MJPEG encoder, frame rate capped.

The pipeline hands over its newest camera frame, face boxes and thermal frame through taps (a
reference swap, nothing else on its threads). One encoder thread, running only while someone is
watching, draws the thermal overlay and the face boxes on the newest frame and encodes it to JPEG
at most ``fps`` times a second. Every viewer is sent the newest JPEG: a slow viewer skips frames
(counted in ``dropped``) instead of queueing them, and nothing is encoded per viewer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import cv2
import numpy as np

from station.domain.model import FaceObservation, ThermalFrame, VisibleFrame

log = logging.getLogger("station.web.live")

BOUNDARY = "frame"
FACE_MAX_AGE_S = 1.0  # boxes older than this are not drawn (the person has left)
THERMAL_MAX_AGE_S = 2.0
SKIN_MIN_C, SCALE_MAX_C = 30.0, 40.0  # the overlay colours only what could be skin


class LiveView:
    """Newest frame in, one JPEG stream out for any number of viewers."""

    def __init__(
        self,
        registration: np.ndarray,
        *,
        fps: float = 5.0,
        width: int = 640,
        quality: int = 75,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registration = np.asarray(registration, dtype=np.float64)  # visible pixel → thermal pixel
        self.period = 1.0 / fps
        self.width = width
        self.quality = quality
        self.clock = clock
        self._frame: VisibleFrame | None = None
        self._faces: FaceObservation | None = None
        self._thermal: ThermalFrame | None = None
        self._cond = threading.Condition()
        self._jpeg: bytes = b""
        self.seq = 0  # number of JPEGs encoded
        self.viewers = 0
        self.sent = 0
        self.dropped = 0  # JPEGs a slow viewer never got because a newer one replaced it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- taps (pipeline threads: swap a reference, nothing more) --------------------------------
    def offer_frame(self, frame: VisibleFrame) -> None:
        """Keep ``frame`` as the picture to encode next (pipeline tap)."""
        self._frame = frame

    def offer_faces(self, obs: FaceObservation) -> None:
        """Keep ``obs`` as the face boxes to draw (pipeline tap)."""
        self._faces = obs

    def offer_thermal(self, frame: ThermalFrame) -> None:
        """Keep ``frame`` as the thermal overlay to draw (pipeline tap)."""
        self._thermal = frame

    # -- encoder -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the encoder thread (it encodes only while someone watches)."""
        self._thread = threading.Thread(target=self._run, name="station-web-mjpeg", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the encoder and end every stream."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)

    def stats(self) -> dict[str, Any]:
        """Return the viewer and frame counters."""
        return {
            "viewers": self.viewers,
            "encoded": self.seq,
            "sent": self.sent,
            "dropped": self.dropped,
            "fps_cap": round(1.0 / self.period, 2),
        }

    def _run(self) -> None:
        last_seq = -1
        while not self._stop.is_set():
            t0 = self.clock()
            frame = self._frame
            if self.viewers > 0 and (frame is None or frame.seq != last_seq):
                try:
                    jpeg = self.render(frame)
                except cv2.error as exc:  # one bad frame must not end the live picture
                    log.warning("live frame not encoded error=%s", exc)
                else:
                    with self._cond:
                        self._jpeg = jpeg
                        self.seq += 1
                        self._cond.notify_all()
                last_seq = frame.seq if frame is not None else -1
            # The cap: never faster than fps, whatever the camera delivers.
            self._stop.wait(max(0.0, self.period - (self.clock() - t0)))

    def render(self, frame: VisibleFrame | None) -> bytes:
        """Return the frame with thermal overlay and face boxes, downscaled to ``width``, as JPEG."""
        if frame is None:
            img: np.ndarray = np.full((self.width * 3 // 4, self.width, 3), 40, np.uint8)
            cv2.putText(
                img,
                "NO CAMERA",
                (self.width // 2 - 110, self.width * 3 // 8),
                cv2.FONT_HERSHEY_SIMPLEX,
                1.2,
                (200, 200, 200),
                2,
                cv2.LINE_AA,
            )
        else:
            h, w = frame.image.shape[:2]
            scale = self.width / w
            img = cv2.resize(frame.image, (self.width, round(h * scale)), interpolation=cv2.INTER_AREA)
            now = self.clock()
            thermal = self._thermal
            if thermal is not None and now - thermal.t <= THERMAL_MAX_AGE_S:
                self._draw_thermal(img, thermal, scale)
            faces = self._faces
            if faces is not None and now - faces.captured_t <= FACE_MAX_AGE_S:
                for f in faces.faces:
                    b = f.box
                    cv2.rectangle(
                        img, (round(b.x1 * scale), round(b.y1 * scale)), (round(b.x2 * scale), round(b.y2 * scale)), (80, 220, 80), 2
                    )
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise cv2.error("imencode failed")
        return bytes(buf)

    def _draw_thermal(self, img: np.ndarray, thermal: ThermalFrame, scale: float) -> None:
        """Blend the thermal image, registered onto the picture, where it reads as warm as skin."""
        oh, ow = img.shape[:2]
        # Output pixel → visible pixel (undo the downscale) → thermal pixel (the registration).
        to_thermal = self.registration @ np.diag([1.0 / scale, 1.0 / scale, 1.0])
        temps = cv2.warpPerspective(
            thermal.pixels_c.astype(np.float32),
            to_thermal,
            (ow, oh),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0.0,
        )
        level = np.clip((temps - SKIN_MIN_C) / (SCALE_MAX_C - SKIN_MIN_C) * 255.0, 0, 255).astype(np.uint8)
        colour = cv2.applyColorMap(level, cv2.COLORMAP_JET)
        mask = temps >= SKIN_MIN_C
        img[mask] = (img[mask] * 0.55 + colour[mask] * 0.45).astype(np.uint8)

    # -- viewers (the web server's event loop) -----------------------------------------------------
    def latest(self) -> tuple[int, bytes]:
        """Return the newest JPEG and its sequence number (0 and empty before the first)."""
        with self._cond:
            return self.seq, self._jpeg

    async def stream(self) -> AsyncIterator[bytes]:
        """Yield multipart/x-mixed-replace parts, the newest JPEG each time.

        Ends when the viewer leaves (Starlette cancels the generator) or the encoder stops.
        """
        self.viewers += 1
        try:
            last = 0
            first = True
            while not self._stop.is_set():
                seq, jpeg = self.latest()
                if seq == last or not jpeg:
                    await asyncio.sleep(self.period / 2)
                    continue
                if last and seq - last > 1:
                    self.dropped += seq - last - 1
                last = seq
                part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n").encode() + jpeg + b"\r\n"
                # Chrome shows a multipart stream's first picture only when the second arrives.
                for _ in range(2 if first else 1):
                    yield part
                first = False
                self.sent += 1
        finally:
            self.viewers -= 1
