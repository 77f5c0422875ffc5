"""Station snapshots for the command-centre board: a small JPEG of the newest camera frame.

Every ``snapshots.interval_s`` the station publishes ``<prefix>/<site>/<station>/snapshot``
(retained, QoS 0, JSON with the JPEG in base64; docs/mqtt.md). Retained so that a board that starts
(or a replica that joins) shows every checkpoint's picture at once; QoS 0 and never through the
outbox because a snapshot is disposable: a newer one replaces it, and a backlog of old pictures
after an outage would be worthless traffic.

Privacy: with ``blur_faces = true`` (the default) every face is blurred before the JPEG leaves the
box. The faces are found by a face detector of the station's configured kind run on the very frame
that is encoded (not the pipeline's latest result, which may belong to an older frame while a
person moves), with a lower score threshold than screening uses, and each box is grown by
``FACE_MARGIN`` on every side: a missed face is a privacy breach, an over-blurred shoulder costs
nothing. If the detector is unavailable (missing or corrupt model) the whole picture is blurred:
the station fails closed, never open. Whatever ``blur_faces`` says, every 2-D code in the picture
(a phone showing a health code) is blanked by ``drivers.codes.redact`` before encoding.

Watching: while someone at the centre has a checkpoint's picture open, the centre sends a signed
``watch`` command (station/link/handlers.py) and the publisher holds a *lease*: until it runs out it
publishes every ``watch_interval_s`` instead of every ``interval_s``. The lease is a monotonic
deadline capped at ``watch_max_lease_s``; a renewal extends it, nothing else does, so when the
watcher goes away the rate falls back by itself. The pictures are rendered exactly as always (the
same blur, the same code blanking): watching changes how often, never what.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from station.domain.model import FaceDetection, VisibleFrame

log = logging.getLogger("station.link.snapshots")

SCHEMA = 1
FACE_MARGIN = 0.35
"""Each face box grows by this fraction of its size on every side before it is blurred (hair, ears,
chin, a box that lags a moving head)."""
SNAPSHOT_SCORE_THRESHOLD = 0.5
"""Lower than screening's 0.7: for privacy a doubtful face is blurred anyway."""


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    """How often, how large and how good a snapshot is, and whether faces are blurred (``[snapshots]``)."""

    interval_s: float = 5.0
    max_width: int = 320
    quality: int = 70
    blur_faces: bool = True
    watch_interval_s: float = 1.0
    watch_max_lease_s: float = 60.0


def _blur_region(img: np.ndarray, x1: int, y1: int, x2: int, y2: int) -> None:
    """Pixelate then blur one region in place: nothing of the face's detail survives either step."""
    region = img[y1:y2, x1:x2]
    h, w = region.shape[:2]
    if h < 2 or w < 2:
        return
    small = cv2.resize(region, (max(1, w // 12), max(1, h // 12)), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    k = max(3, (min(w, h) // 4) | 1)
    img[y1:y2, x1:x2] = cv2.GaussianBlur(coarse, (k, k), 0)


def blur_faces(image: np.ndarray, faces: Sequence[FaceDetection], margin: float = FACE_MARGIN) -> np.ndarray:
    """Return a copy of ``image`` with every face box (grown by ``margin``) blurred beyond recognition."""
    out = image.copy()
    h, w = out.shape[:2]
    for f in faces:
        b = f.box
        mx, my = b.width * margin, b.height * margin
        x1, y1 = int(max(0, b.x1 - mx)), int(max(0, b.y1 - my))
        x2, y2 = int(min(w, b.x2 + mx + 1)), int(min(h, b.y2 + my + 1))
        _blur_region(out, x1, y1, x2, y2)
    return out


def blur_all(image: np.ndarray) -> np.ndarray:
    """Return the fail-closed picture when no detector can say where the faces are: all of it blurred."""
    out = image.copy()
    _blur_region(out, 0, 0, out.shape[1], out.shape[0])
    return out


def encode_jpeg(image: np.ndarray, max_width: int, quality: int) -> tuple[bytes, int, int]:
    """Downscale to ``max_width`` (keeping the aspect) and JPEG-encode: (bytes, width, height)."""
    h, w = image.shape[:2]
    if w > max_width:
        image = cv2.resize(image, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes(), image.shape[1], image.shape[0]


def render_snapshot(image: np.ndarray, detector: Any | None, settings: SnapshotSettings) -> tuple[bytes, dict[str, Any]]:
    """(JPEG bytes, metadata) for one frame; faces blurred unless ``settings.blur_faces`` is off.

    ``detector`` None (or one whose ``state`` is not ``ok``) with blurring on blurs everything.
    """
    meta: dict[str, Any] = {"blur": "off", "faces_blurred": 0}
    if settings.blur_faces:
        if detector is None or str(getattr(detector, "state", "ok")) != "ok":
            image, meta = blur_all(image), {"blur": "all", "faces_blurred": None}
        else:
            faces = detector.detect(image)
            image, meta = blur_faces(image, faces), {"blur": "faces", "faces_blurred": len(faces)}
    # Always, whatever blur_faces says: a readable health-code QR in the picture would send its raw
    # payload to the board (drivers.codes.redact; the code privacy rule covers pictures too).
    from drivers.codes.redact import redact_codes

    image, codes_blanked = redact_codes(image)
    jpeg, w, h = encode_jpeg(image, settings.max_width, settings.quality)
    return jpeg, dict(meta, width=w, height=h, codes_blanked=codes_blanked)


def snapshot_payload(jpeg: bytes, meta: dict[str, Any], identity: dict[str, str], ts: float) -> bytes:
    """Return the ``snapshot`` message: JSON with the station's identity, the metadata and the JPEG in base64."""
    body = {
        "schema": SCHEMA,
        **identity,
        "ts": round(ts, 3),
        "content_type": "image/jpeg",
        **meta,
        "jpeg_b64": base64.b64encode(jpeg).decode("ascii"),
    }
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def decode_snapshot(payload: bytes) -> tuple[bytes, dict[str, Any]]:
    """(JPEG bytes, the other fields) of a ``snapshot`` payload; ValueError if it is not one."""
    body = json.loads(payload)
    if not isinstance(body, dict) or not isinstance(body.get("jpeg_b64"), str):
        raise ValueError("not a snapshot payload")
    jpeg = base64.b64decode(body.pop("jpeg_b64"), validate=True)
    if not jpeg.startswith(b"\xff\xd8"):
        raise ValueError("snapshot is not a JPEG")
    return jpeg, body


class LatestFrame:
    """A pipeline frame tap that keeps only a reference to the newest frame (no copy, no work)."""

    def __init__(self) -> None:
        self._frame: VisibleFrame | None = None

    def offer(self, frame: VisibleFrame) -> None:
        """Keep ``frame`` as the newest (called on the camera thread)."""
        self._frame = frame  # a single reference assignment: atomic, the camera thread never waits

    def take(self) -> VisibleFrame | None:
        """Return the newest frame, or None before the first."""
        return self._frame


class SnapshotPublisher:
    """Every ``interval_s``: newest frame → blurred JPEG → ``publish(payload)`` (retained, QoS 0).

    ``publish`` returns False while the link is down; that snapshot is simply skipped.
    """

    def __init__(
        self,
        frames: LatestFrame,
        detector: Any | None,
        publish: Callable[[bytes], bool],
        identity: dict[str, str],
        settings: SnapshotSettings,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.frames = frames
        self.detector = detector
        self._publish = publish
        self.identity = dict(identity)
        self.settings = settings
        self._wall = wall
        self._monotonic = monotonic
        self._watch_until = 0.0  # monotonic end of the centre's watch lease (0: nobody watching)
        self._wake = threading.Event()  # a new lease cuts the idle wait short
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_seq: int | None = None
        self.published = 0
        self.skipped = 0
        self.errors = 0
        self.last_bytes = 0
        self.watches = 0

    def watch(self, lease_s: float) -> dict[str, Any]:
        """Publish every ``watch_interval_s`` for ``lease_s`` more seconds (capped); return what was granted.

        A lease never shortens one already held: two watchers renewing at different times keep the
        longer. Raises ValueError for a lease that is not a positive finite number.
        """
        if isinstance(lease_s, bool) or not isinstance(lease_s, (int, float)) or not lease_s > 0 or lease_s == float("inf"):
            raise ValueError(f"lease_s {lease_s!r}: expected seconds > 0 (at most {self.settings.watch_max_lease_s:g})")
        granted = min(float(lease_s), self.settings.watch_max_lease_s)
        self._watch_until = max(self._watch_until, self._monotonic() + granted)
        self.watches += 1
        self._wake.set()
        return {"lease_s": round(granted, 3), "interval_s": self.current_interval(), "idle_interval_s": self.settings.interval_s}

    def watched(self) -> bool:
        """Return whether a watch lease is running now."""
        return self._monotonic() < self._watch_until

    def current_interval(self) -> float:
        """Return the seconds between snapshots now: ``watch_interval_s`` under a lease, else ``interval_s``."""
        if self.watched():
            return min(self.settings.watch_interval_s, self.settings.interval_s)
        return self.settings.interval_s

    def start(self) -> None:
        """Start publishing on its own thread."""
        self._thread = threading.Thread(target=self._run, name="station-snapshots", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waiting at most ``timeout`` s)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def stats(self) -> dict[str, int]:
        """Return the snapshots published, skipped and failed, and the size of the last JPEG."""
        return {
            "published": self.published,
            "skipped": self.skipped,
            "errors": self.errors,
            "last_bytes": self.last_bytes,
            "watches": self.watches,
            "watched": int(self.watched()),
        }

    def publish_once(self) -> bool:
        """One snapshot now (also used by tests); False when there is no new frame or no link."""
        frame = self.frames.take()
        if frame is None or frame.seq == self._last_seq:
            self.skipped += 1  # camera stalled: re-sending the same picture tells the board nothing new
            return False
        jpeg, meta = render_snapshot(frame.image, self.detector, self.settings)
        payload = snapshot_payload(jpeg, meta, self.identity, self._wall())
        if not self._publish(payload):
            self.skipped += 1
            return False
        self._last_seq = frame.seq
        self.published += 1
        self.last_bytes = len(jpeg)
        return True

    def _run(self) -> None:
        log.info(
            "snapshots started interval_s=%.1f max_width=%d blur_faces=%s",
            self.settings.interval_s,
            self.settings.max_width,
            self.settings.blur_faces,
        )
        # The first one soon after start, so a board sees the checkpoint without waiting a period.
        due = self._monotonic() + min(1.0, self.settings.interval_s)
        last = 0.0
        while not self._stop.is_set():
            self._wake.wait(max(0.0, due - self._monotonic()))
            if self._wake.is_set():  # a new lease (or stop): the next picture is due one watched interval after the last
                self._wake.clear()
                due = min(due, last + self.current_interval())
                continue
            if self._stop.is_set():
                break
            last = self._monotonic()
            due = last + self.current_interval()
            try:
                self.publish_once()
            except Exception:  # logged and counted; the next period tries again
                self.errors += 1
                log.exception("snapshot failed")
        log.info("snapshots stopped %s", self.stats())


def snapshot_topic(topic_prefix: str, site: str, station_id: str) -> str:
    """Return the station's retained ``snapshot`` topic."""
    return f"{topic_prefix}/{site}/{station_id}/snapshot"
