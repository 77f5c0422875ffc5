"""A real visible camera (USB/CSI through V4L2, or a video file) over ``cv2.VideoCapture``.

A capture thread reads continuously and keeps only the newest frame. The detectors are slower
than the camera on a Pi, and a queue of stale frames would make every decision late by the queue's
length (a failure the field notes blame for "slow" commercial terminals); overwriting an unread
frame is counted as a drop instead. A device that stops delivering (USB reset, cable, driver) is
released and reopened with exponential backoff, so the station recovers without a restart.

A video file path works too: it is paced at its own frame rate (like a camera) and, at its end,
reopened from the start through the same reopen path a failed device takes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import cv2
import numpy as np

from station.domain.model import VisibleFrame
from station.ops.backoff import Backoff

log = logging.getLogger("station.camera")


def _device_arg(device: str | int) -> str | int:
    """Return what ``cv2.VideoCapture`` opens: ``"0"`` is camera index 0; a path, file or URL stays as is."""
    if isinstance(device, str) and device.strip().isdigit():
        return int(device.strip())
    return device


class OpenCVCamera:
    """Read a camera or video file (the ``FrameSource`` port) into a 1-slot latest-frame buffer.

    ``backoff_s`` is the (first, maximum) wait between reopen attempts. ``realtime`` paces reads at
    ``fps``; by default only for a file, since a device paces itself.
    """

    name = "opencv-camera"

    def __init__(
        self,
        device: str | int,
        width: int = 640,
        height: int = 480,
        fps: float = 15,
        *,
        backoff_s: tuple[float, float] = (0.5, 10.0),
        realtime: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device = _device_arg(device)
        self.width = int(width)
        self.height = int(height)
        self.fps = float(fps)
        self.backoff_s = backoff_s
        is_file = isinstance(self.device, str) and Path(self.device).is_file()
        self.realtime = is_file if realtime is None else realtime
        self._clock = clock
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: VisibleFrame | None = None
        self._seq = 0
        self._frames = 0
        self._dropped = 0
        self._delivered = 0
        self._reopens = 0
        self._read_failures = 0
        self._open_failures = 0
        self._state = "stopped"
        self._frame_size: tuple[int, int] | None = None
        self._last_frame_t: float | None = None
        self._last_error = ""

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the capture thread; it opens the device itself so a missing camera never blocks start."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._state = "opening"
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.device}", daemon=True)
        self._thread.start()
        log.info("camera capture started", extra={"device": str(self.device), "size": (self.width, self.height)})

    def stop(self) -> None:
        """Stop the capture thread (waiting up to 5 s) and release the device."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5.0)
            if thread.is_alive():
                # A capture stuck inside the driver cannot be interrupted; it is a daemon thread.
                log.error("camera capture thread did not stop within 5 s", extra={"device": str(self.device)})
        self._thread = None
        self._state = "stopped"

    # -- consumer side ------------------------------------------------------------------------
    def read(self, timeout: float) -> VisibleFrame | None:
        """Return the newest frame not yet read, waiting up to ``timeout`` s; None on timeout or stop."""
        with self._cond:
            self._cond.wait_for(lambda: self._latest is not None or self._stopping.is_set(), timeout=max(0.0, timeout))
            frame = self._latest
            self._latest = None
            if frame is not None:
                self._delivered += 1
            return frame

    def stats(self) -> Mapping[str, int | float | str]:
        """Return the capture state and counters (frames, drops, reopens, failures, last frame age)."""
        with self._cond:
            age = -1.0 if self._last_frame_t is None else round(self._clock() - self._last_frame_t, 3)
            size = self._frame_size
            return {
                "state": self._state,
                "frames": self._frames,
                "frames_delivered": self._delivered,
                "frames_dropped": self._dropped,
                "reopens": self._reopens,
                "open_failures": self._open_failures,
                "read_failures": self._read_failures,
                "width": size[0] if size else 0,
                "height": size[1] if size else 0,
                "last_frame_age_s": age,
                "last_error": self._last_error,
            }

    # -- capture thread -----------------------------------------------------------------------
    def _open(self) -> cv2.VideoCapture | None:
        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            return None
        if not (isinstance(self.device, str) and Path(self.device).is_file()):
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            cap.set(cv2.CAP_PROP_FPS, self.fps)
            # Drivers that honour it keep one buffer, so the frame we get is the newest one.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return cap

    def _run(self) -> None:
        backoff = Backoff(*self.backoff_s)
        period = 1.0 / self.fps if self.fps > 0 else 0.0
        delay: float | None = None  # wait before the next open; None: open at once
        while not self._stopping.is_set():
            if delay is not None:
                self._state = "reopening"
                if self._stopping.wait(delay):
                    break
                self._reopens += 1
            cap = self._open()
            if cap is None:
                self._open_failures += 1
                self._last_error = "open failed"
                delay = backoff.next()
                log.warning("camera open failed", extra={"device": str(self.device), "retry_in_s": delay})
                continue
            self._state = "running"
            log.info("camera opened", extra={"device": str(self.device), "backend": cap.getBackendName()})
            try:
                got_frame = self._capture(cap, period)
            finally:
                cap.release()
            if got_frame:
                backoff.reset()
            delay = backoff.next()
        self._state = "stopped"

    def _capture(self, cap: cv2.VideoCapture, period: float) -> bool:
        """Read until failure or stop; return whether any frame arrived (to reset the backoff)."""
        got_frame = False
        next_t = self._clock()
        while not self._stopping.is_set():
            if self.realtime and period > 0:
                delay = next_t - self._clock()
                if delay > 0 and self._stopping.wait(delay):
                    return got_frame
                next_t = max(next_t + period, self._clock() - period)
            ok, image = cap.read()
            if not ok or image is None:
                self._read_failures += 1
                self._last_error = "read failed (end of stream or device lost)"
                log.warning("camera read failed; reopening", extra={"device": str(self.device)})
                return got_frame
            got_frame = True
            self._publish(image)
        return got_frame

    def _publish(self, image: np.ndarray) -> None:
        t = self._clock()
        size = (int(image.shape[1]), int(image.shape[0]))
        if size != self._frame_size:
            if size != (self.width, self.height):
                log.warning(
                    "camera delivers a different size than requested",
                    extra={"device": str(self.device), "got": size, "asked": (self.width, self.height)},
                )
            self._frame_size = size
        with self._cond:
            if self._latest is not None:
                self._dropped += 1
            self._latest = VisibleFrame(image=image, seq=self._seq, t=t)
            self._seq += 1
            self._frames += 1
            self._last_frame_t = t
            self._cond.notify_all()
