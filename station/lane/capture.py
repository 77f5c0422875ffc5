"""Face crops of recent frames, and the crops an alarm keeps so staff can find who walked away.

The face thread measures every detected face's sharpness (variance of the Laplacian of the grey
crop: blur removes the high frequencies it measures) and keeps the crops of the last few frames;
the lane (pure) scores frames with ``station.domain.tracking.capture_score`` and names the best one
by frame sequence number and box; the executor asks for that crop here (:class:`CaptureKeeper`).

What is kept on disk is the site's choice (``[capture] keep``): by default only for alarms and
denials (``alarms``), for every decision (``all``) or never (``none``). :class:`CropWriter` is a
decision listener that only hands the decision to a bounded queue; its own thread encodes the face
crop (JPEG) and the thermal crop of the same face (false-colour PNG, from the thermal frame the
reading came from, kept by :class:`ThermalFrames`), writes them under ``<data_dir>/crops`` (0600)
and links them to the event (``event_crops``). A full queue drops the crop and counts it: the gate
never waits for a picture. Retention and erasure remove them (``station.store.retention``); they
are never published over MQTT.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from station.domain.model import Box, Decision, FaceDetection, ScreeningEvent, ThermalFrame
from station.domain.thermal import map_box
from station.ops.fileio import atomic_write

if TYPE_CHECKING:
    from station.lane.pipeline import Decided
    from station.store.events import SqliteEventStore

log = logging.getLogger("station.lane.capture")

KEEP_CHOICES = ("alarms", "all", "none")
CROP_KINDS = {"face": ".jpg", "thermal": ".png"}
"""Kinds of crop kept per event and the file suffix each is written with."""
THERMAL_SCALE_C = (28.0, 40.0)  # fixed colour scale: the same colour means the same temperature on every crop
_SAFE_ID = re.compile(r"^[0-9A-Za-z_-]{1,64}$")  # event ids become file names


class CaptureKeeper:
    """Keeps the face crops of the last few frames; thread-safe: the face thread writes, the executor reads."""

    def __init__(self, frames: int = 48) -> None:
        # 48 frames ≈ 3 s at 15 fps: a screening's best frame is usually its last stable second,
        # and older crops are not worth their memory (~100 kB per face).
        self._frames = frames
        self._crops: OrderedDict[int, list[tuple[Box, np.ndarray]]] = OrderedDict()
        self._lock = threading.Lock()

    def measure(self, frame_seq: int, image: np.ndarray, faces: list[FaceDetection]) -> tuple[float, ...]:
        """Return the sharpness of each face (in ``faces`` order), and keep the crops of this frame."""
        import cv2  # the daemon has it loaded already; stationctl, which imports the app, need not

        h, w = image.shape[:2]
        sharpness: list[float] = []
        crops: list[tuple[Box, np.ndarray]] = []
        for f in faces:
            x1, y1 = max(0, int(f.box.x1)), max(0, int(f.box.y1))
            x2, y2 = min(w, int(round(f.box.x2))), min(h, int(round(f.box.y2)))
            if x2 - x1 < 3 or y2 - y1 < 3:
                sharpness.append(0.0)
                continue
            crop = image[y1:y2, x1:x2]
            grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
            sharpness.append(float(cv2.Laplacian(grey, cv2.CV_64F).var()))
            crops.append((f.box, crop.copy()))
        with self._lock:
            self._crops[frame_seq] = crops
            while len(self._crops) > self._frames:
                self._crops.popitem(last=False)
        return tuple(sharpness)

    def crop_for(self, capture: dict[str, Any] | None) -> np.ndarray | None:
        """Return the crop the lane chose (``{"frame_seq", "box"}``), or None when it is no longer kept."""
        if not capture:
            return None
        with self._lock:
            crops = self._crops.get(int(capture["frame_seq"]))
        if not crops:
            return None
        want = Box(*capture["box"])
        box, crop = max(crops, key=lambda c: c[0].iou(want))
        return crop if box.iou(want) > 0.5 else None


def keeps(keep: str, event: ScreeningEvent) -> bool:
    """Tell whether the site's ``keep`` choice keeps the crops of ``event``.

    ``alarms`` keeps fevers (an alarm under either temperature policy) and denials; ``all`` every
    decision; ``none`` nothing.
    """
    if keep == "all":
        return True
    if keep == "alarms":
        return event.alarm or event.decision in (Decision.DENY_FEVER, Decision.DENY_CODE)
    return False


class ThermalFrames:
    """Keeps the last few thermal frames by sequence number (a pipeline thermal tap: a reference, no copy)."""

    def __init__(self, frames: int = 64) -> None:
        # 64 frames: 8 s at the 8 Hz a module runs at; the reading's frame is a second or two old at decision time.
        self._frames: deque[ThermalFrame] = deque(maxlen=frames)
        self._lock = threading.Lock()

    def offer(self, frame: ThermalFrame) -> None:
        """Keep ``frame`` (the oldest kept one goes)."""
        with self._lock:
            self._frames.append(frame)

    def find(self, seq: int | None) -> ThermalFrame | None:
        """Return the frame numbered ``seq``, else the newest frame (None when there is none)."""
        with self._lock:
            frames = list(self._frames)
        if not frames:
            return None
        if seq is not None:
            for f in reversed(frames):
                if f.seq == seq:
                    return f
        return frames[-1]


def thermal_region(pixels: np.ndarray, box: Box, registration: np.ndarray, margin: float = 0.35) -> np.ndarray | None:
    """Return the thermal pixels around the visible face ``box`` (mapped through ``registration``), or None if outside."""
    x1, y1, x2, y2 = map_box(box, registration)
    if not all(np.isfinite(v) for v in (x1, y1, x2, y2)):
        return None
    # A margin around the face: at 32×24 pixels a face is a few pixels wide; the head's outline is what staff recognise.
    mx, my = (x2 - x1) * margin, (y2 - y1) * margin
    rows, cols = pixels.shape[:2]
    ix1, iy1 = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    ix2, iy2 = min(cols, int(np.ceil(x2 + mx))), min(rows, int(np.ceil(y2 + my)))
    if ix2 - ix1 < 1 or iy2 - iy1 < 1:
        return None
    return np.array(pixels[iy1:iy2, ix1:ix2], dtype=np.float32)


def render_thermal(region: np.ndarray, height: int = 160) -> np.ndarray:
    """Return ``region`` (°C) as a false-colour BGR image about ``height`` pixels tall, on a fixed scale."""
    import cv2

    lo, hi = THERMAL_SCALE_C
    finite = np.nan_to_num(region.astype(np.float32), nan=lo, posinf=hi, neginf=lo)
    grey = (np.clip((finite - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)
    scale = max(1, round(height / max(1, grey.shape[0])))
    # Nearest neighbour: each sensor pixel stays a visible square, nothing is invented between them.
    big = cv2.resize(grey, (grey.shape[1] * scale, grey.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    return np.asarray(cv2.applyColorMap(big, cv2.COLORMAP_INFERNO))


def encode_face(crop: np.ndarray, max_side: int = 256, quality: int = 85) -> bytes:
    """Return the face crop as a JPEG, downscaled so its longer side is at most ``max_side``."""
    import cv2

    h, w = crop.shape[:2]
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        crop = cv2.resize(crop, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf.tobytes())


def encode_png(image: np.ndarray) -> bytes:
    """Return ``image`` as a PNG."""
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(buf.tobytes())


@dataclass(frozen=True, slots=True)
class CropJob:
    """What the writer thread needs for one decision: the event, its face crop, its thermal frame."""

    event_id: str
    face: np.ndarray | None
    thermal: ThermalFrame | None
    box: Box | None


class CropWriter:
    """Keeps the face and thermal crops of the decisions the site keeps, off the screening path.

    :meth:`on_decided` is a pipeline listener (executor thread, after the gate acted): it only
    queues the job (``queue_size`` at most; a full queue drops it, counted as ``dropped``). The
    writer thread encodes, writes 0600 files under ``crops_dir`` and links them to the event.
    """

    def __init__(
        self,
        store: SqliteEventStore,
        crops_dir: Path,
        keep: str,
        thermal: ThermalFrames,
        registration: Callable[[], np.ndarray],
        queue_size: int = 8,
    ) -> None:
        """Prepare the writer; nothing runs before :meth:`start`."""
        if keep not in KEEP_CHOICES:
            raise ValueError(f"capture.keep must be one of {', '.join(KEEP_CHOICES)}, not {keep!r}")
        self.store = store
        self.crops_dir = Path(crops_dir)
        self.keep = keep
        self.thermal = thermal
        self.registration = registration
        self._queue: queue.Queue[CropJob | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="station-crops", daemon=True)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop the thread (call after the pipeline stopped, before the store closes)."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.error("crop writer did not drain its queue before stopping")
            return
        self._thread.join(timeout)

    def on_decided(self, d: Decided) -> None:
        """Queue the crops of a kept decision; never blocks (a full queue drops them, counted)."""
        event = d.event
        if not keeps(self.keep, event):
            return
        box_list = event.face.get("box") if isinstance(event.face, dict) else None
        box = Box(*box_list) if box_list else None
        seq = event.temperature.get("thermal_seq") if isinstance(event.temperature, dict) else None
        frame = self.thermal.find(seq if isinstance(seq, int) else None)
        job = CropJob(event.event_id, d.capture if isinstance(d.capture, np.ndarray) else None, frame, box)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._count("dropped")
            return
        self._count("queued")

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self.write(job)
            except Exception as exc:  # this decision's crops only; the next one is written
                self._count("failed")
                log.error("crop not kept event_id=%s error=%s: %s", job.event_id, type(exc).__name__, exc)

    def write(self, job: CropJob) -> dict[str, str]:
        """Encode and write the crops of ``job`` and link them to its event; return kind → file name."""
        if not _SAFE_ID.match(job.event_id):
            self._count("skipped")
            return {}
        if self.store.event(job.event_id) is None:
            # An event whose write failed (disk full) has no crop: nothing on disk without its record.
            self._count("skipped")
            return {}
        images: dict[str, bytes] = {}
        if job.face is not None and job.face.size:
            images["face"] = encode_face(job.face)
        if job.thermal is not None and job.box is not None:
            region = thermal_region(job.thermal.pixels_c, job.box, self.registration())
            if region is not None:
                images["thermal"] = encode_png(render_thermal(region))
        if not images:
            self._count("skipped")
            return {}
        self.crops_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        files: dict[str, str] = {}
        try:
            for kind, data in images.items():
                name = f"{job.event_id}.{kind}{CROP_KINDS[kind]}"
                atomic_write(self.crops_dir / name, data, backup=False, private=True)
                files[kind] = name
            self.store.record_crops(job.event_id, {k: (f, len(images[k])) for k, f in files.items()})
        except BaseException:
            for name in files.values():  # no file without its link (the purge would find it only by age)
                try:
                    os.unlink(self.crops_dir / name)
                except OSError:
                    pass
            raise
        self._count("written")
        log.info("crops kept event_id=%s kinds=%s", job.event_id, ",".join(sorted(files)))
        return files

    def stats(self) -> dict[str, Any]:
        """Return the policy and the counts: queued, written, dropped (queue full), skipped, failed."""
        with self._lock:
            counts = dict(self._counts)
        return {
            "keep": self.keep,
            "pending": self._queue.qsize(),
            **{k: counts.get(k, 0) for k in ("queued", "written", "dropped", "skipped", "failed")},
        }
