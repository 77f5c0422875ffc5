"""The reconnecting serial source both thermal modules are built on, and the serial-port helpers."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

import serial

from drivers.thermal.gy_protocol import DecodedFrame, FrameParser, ModuleProfile, ParsedItem, ParsedReply
from station.domain.model import ThermalFrame
from station.ops.backoff import Backoff

log = logging.getLogger("station.thermal")

BY_ID_DIR = "/dev/serial/by-id"
READ_TIMEOUT_S = 0.05  # one read blocks at most this long, so the loop sees stop, stalls and its poll
WRITE_TIMEOUT_S = 0.5
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
QUEUE_MAX = 2


def resolve_port(path: str, by_id_dir: str = BY_ID_DIR) -> str:
    """Return the /dev/serial/by-id link that points at ``path``, or ``path`` itself if there is none.

    /dev/ttyUSBn numbers follow plug order and change across replugs and reboots; the by-id name
    carries the adapter's serial number and stays put, so reconnects should use it.
    """
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(by_id_dir):
        return path
    try:
        names = sorted(os.listdir(by_id_dir))
    except FileNotFoundError:
        return path
    target = os.path.realpath(path)
    for name in names:
        link = os.path.join(by_id_dir, name)
        if os.path.realpath(link) == target:
            return link
    return path


class ThermalLinkError(RuntimeError):
    """The module could not be reached: port missing, locked, or no valid frame."""


class SerialThermalSource:
    """Base of a ``ThermalSource`` on a serial port: reader thread, parser, reconnect, frame queue, stats.

    ``start()`` opens the port (``_open_link``) and starts a reader thread that feeds every byte to a
    ``FrameParser`` for ``profile``. ``read_frame`` hands out the freshest frame (a queue of two; older
    frames are dropped and counted, because a screening decision must use the newest image, not a
    backlog). A stall (no valid frame for ``_stall_timeout()`` seconds) or a read error (USB unplug)
    closes the port and reopens it with back-off (``Backoff``, 0.1 s doubling to 2 s, reset by a valid
    frame) until ``stop()``. ``port_resolver``, if given, is asked for the path before every open; a
    given ``port`` is turned into its /dev/serial/by-id form (``resolve_port``), which survives replugs.

    Implausible frames (checksum-valid but physically impossible) prove the link is alive, so they
    reset the stall timer; they are counted and never delivered.

    With ``require_link_at_start=False`` a module that cannot be reached at start-up is logged and then
    looked for in the background like an unplugged one, instead of failing ``start()``: a gate whose
    module is missing keeps running (every screening ends in ``manual_check``) and says so, rather
    than restarting in a loop.

    ``stats()["state"]`` is one of: probing, connected, reconnecting, stopped, failed (the reader
    thread crashed, a bug, logged with its traceback). ``connected()`` is true only while the port is
    open and valid frames keep arriving.

    A subclass MUST override:

    * ``_open_link(path)``: open ``path`` and make the module talk (find its speed, configure it, ask
      for a frame); return the open port once a valid frame has arrived, or close it and return None
      if none did. Raise ``serial.SerialException`` or ``OSError`` if the port cannot be opened.

    and MAY override:

    * ``_poll(ser, now)``: called after every read (at least every ``READ_TIMEOUT_S``), e.g. to
      request the next frame from a query-driven module;
    * ``_on_frame(now)``: a valid frame arrived (called under the stats lock);
    * ``_on_reply(reply)``: a command reply arrived (default: ignored);
    * ``_on_link_up(path)``: the link is up (default: one log line);
    * ``_stall_timeout()``: default ``max(1 s, stall_factor / refresh_hz)``;
    * ``_opening_state()``: the state shown while a reopen is tried (default ``reconnecting``);
    * ``_no_frame_reason()``: the start-up error when the port opened but no frame came;
    * ``_extra_stats()``: module-specific entries for ``stats()`` (called under the stats lock).
    """

    def __init__(
        self,
        port: str,
        profile: ModuleProfile,
        *,
        name: str,
        refresh_hz: float,
        stall_factor: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        port_resolver: Callable[[], str] | None = None,
        require_link_at_start: bool = True,
    ) -> None:
        if refresh_hz <= 0:
            raise ValueError("refresh_hz must be positive")
        if stall_factor <= 0:
            raise ValueError("stall_factor must be positive")
        self.name = name
        self._port_given = port
        self._port = port  # the path in use (by-id form once resolved)
        self._refresh_hz = float(refresh_hz)
        self._stall_factor = stall_factor
        self._clock = clock
        self._resolver = port_resolver
        self._require_link = require_link_at_start

        self._parser = FrameParser(profile)
        self._ser: serial.Serial | None = None
        self._write_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: deque[ThermalFrame] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(BACKOFF_FIRST_S, BACKOFF_MAX_S)

        self._state = "stopped"
        self._seq = 0
        self._frames_dropped = 0
        self._stalls = 0
        self._reconnects = 0
        self._read_errors = 0
        self._open_failures = 0
        self._last_valid_t = 0.0

    # -- ThermalSource -----------------------------------------------------------------------
    def start(self) -> None:
        """Open the port and reach the module, then start reading; raise ThermalLinkError if required and unreachable."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stop.clear()
        self._set_state("probing")
        if self._resolver is None:
            self._port = resolve_port(self._port_given)  # resolved while the device is present
        problem: ThermalLinkError | None = None
        try:
            up = self._connect()
        except (serial.SerialException, OSError) as exc:
            problem = ThermalLinkError(f"cannot open {self._port}: {exc}")
        else:
            if not up:
                problem = ThermalLinkError(self._no_frame_reason())
        if problem is not None:
            if self._require_link:
                self._set_state("stopped")
                raise problem
            log.error(
                "thermal module not reachable at start-up, looking for it in the background: %s",
                problem,
                extra={"thermal": {"event": "start_without_link", "port": self._port}},
            )
            with self._stats_lock:
                self._open_failures += 1
            self._set_state("reconnecting")
        self._thread = threading.Thread(target=self._run, name=f"thermal-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the reader thread and close the port."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.error("thermal reader did not stop port=%s", self._port)
            self._thread = None
        self._close()
        self._set_state("stopped")
        with self._cond:
            self._cond.notify_all()

    def read_frame(self, timeout: float) -> ThermalFrame | None:
        """Return the oldest queued frame, waiting up to ``timeout`` seconds; None if none came."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._queue:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(left)
            return self._queue.popleft()

    def connected(self) -> bool:
        """Return True only while the port is open and valid frames keep arriving."""
        with self._stats_lock:
            return self._state == "connected" and self._clock() - self._last_valid_t <= self._stall_timeout()

    def stats(self) -> dict[str, int | float | str]:
        """Return the parser's counters, the link state and the reconnect counters."""
        with self._stats_lock:
            out: dict[str, int | float | str] = dict(self._parser.counter_dict())
            age = self._clock() - self._last_valid_t if self._last_valid_t else -1.0
            out.update(
                state=self._state,
                port=self._port,
                frames_dropped=self._frames_dropped,
                stalls=self._stalls,
                reconnects=self._reconnects,
                read_errors=self._read_errors,
                open_failures=self._open_failures,
                last_frame_age_s=round(age, 3),
            )
            out.update(self._extra_stats())
            return out

    # -- what subclasses provide -----------------------------------------------------------------
    def _open_link(self, path: str) -> serial.Serial | None:
        """Open ``path`` and make the module talk; return the port once a valid frame arrived, else None."""
        raise NotImplementedError

    def _poll(self, ser: serial.Serial, now: float) -> None:
        """Act on the link after each read (request a frame, …); nothing by default."""

    def _on_frame(self, now: float) -> None:
        """Note that a valid frame arrived at ``now``; nothing by default."""

    def _on_reply(self, reply: ParsedReply) -> None:
        """Take a command reply; ignored by default."""

    def _on_link_up(self, path: str) -> None:
        """Log that the link is up."""
        log.info("thermal link up port=%s module=%s", path, self.name, extra={"thermal": {"event": "link_up", "port": path}})

    def _stall_timeout(self) -> float:
        """Return the seconds without a valid frame after which the link counts as stalled."""
        return max(1.0, self._stall_factor / self._refresh_hz)

    def _opening_state(self) -> str:
        """Return the state shown while the port is reopened."""
        return "reconnecting"

    def _no_frame_reason(self) -> str:
        """Return the start-up error for a port that opened but gave no valid frame."""
        return f"no {self._parser.profile.name} frame on {self._port}"

    def _extra_stats(self) -> dict[str, int | float | str]:
        """Return module-specific entries for ``stats()``; none by default."""
        return {}

    # -- link management -----------------------------------------------------------------------
    def _connect(self) -> bool:
        """Make one attempt to open the link; return whether it is up (``_ser`` is set only then)."""
        path = self._resolver() if self._resolver is not None else self._port
        self._port = path
        ser = self._open_link(path)
        if ser is None:
            return False
        with self._stats_lock:
            self._last_valid_t = self._clock()
        self._parser.reset()
        ser.reset_input_buffer()
        with self._write_lock:
            self._ser = ser
        self._set_state("connected")
        self._on_link_up(path)
        return True

    def _close(self) -> None:
        with self._write_lock:
            ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError) as exc:
                log.warning("thermal close failed port=%s error=%s", self._port, exc)

    def _send(self, data: bytes) -> bool:
        """Write ``data`` to the module; return False if the link is down or the write failed."""
        with self._write_lock:
            if self._ser is None:
                return False
            try:
                self._ser.write(data)
            except (serial.SerialException, OSError) as exc:
                log.warning("thermal write failed port=%s error=%s", self._port, exc)
                return False
            return True

    def _set_state(self, state: str) -> None:
        with self._stats_lock:
            self._state = state

    def _link_lost(self, reason: str, **fields: object) -> None:
        self._close()
        self._set_state("reconnecting")
        log.warning(
            "thermal link lost reason=%s port=%s %s",
            reason,
            self._port,
            " ".join(f"{k}={v}" for k, v in fields.items()),
            extra={"thermal": {"event": "link_lost", "reason": reason, **fields}},
        )

    def _reconnect(self) -> None:
        """Reopen until connected or stopped, backing off after each failure."""
        while not self._stop.is_set():
            if self._stop.wait(self._backoff.next()):
                return
            self._set_state(self._opening_state())
            try:
                up = self._connect()
            except (serial.SerialException, OSError) as exc:
                with self._stats_lock:
                    self._open_failures += 1
                self._set_state("reconnecting")
                log.info(
                    "thermal reopen failed port=%s error=%s",
                    self._port,
                    exc,
                    extra={"thermal": {"event": "reopen_failed", "port": self._port}},
                )
                continue
            if up:
                with self._stats_lock:
                    self._reconnects += 1
                return
            self._set_state("reconnecting")

    # -- reader thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._read_loop()
        except BaseException:
            # a bug, not a link problem: say so loudly and leave a state that health checks see
            log.exception("thermal reader crashed port=%s", self._port)
            self._set_state("failed")
            raise

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            ser = self._ser
            if ser is None:
                self._reconnect()
                continue
            try:
                data = ser.read(ser.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                with self._stats_lock:
                    self._read_errors += 1
                self._link_lost("read_error", error=str(exc))
                continue
            now = self._clock()
            if data:
                implausible_before = self._parser.implausible_frames
                items = self._parser.feed(data)
                if self._parser.implausible_frames != implausible_before:
                    with self._stats_lock:
                        self._last_valid_t = now  # the link works; the sensor data does not
                self._handle(items, now)
            try:
                self._poll(ser, now)
            except (serial.SerialException, OSError) as exc:
                with self._stats_lock:
                    self._read_errors += 1
                self._link_lost("io_error", error=str(exc))
                continue
            if now - self._last_valid_t > self._stall_timeout():
                with self._stats_lock:
                    self._stalls += 1
                self._link_lost("stall", silent_s=round(now - self._last_valid_t, 2))

    def _handle(self, items: list[ParsedItem], now: float) -> None:
        for item in items:
            if isinstance(item, ParsedReply):
                self._on_reply(item)
                continue
            self._deliver(item, now)

    def _deliver(self, item: DecodedFrame, now: float) -> None:
        self._backoff.reset()  # a valid frame: the next loss starts the back-off from its shortest wait
        with self._stats_lock:
            self._last_valid_t = now
            self._on_frame(now)
        with self._cond:
            self._seq += 1
            frame = ThermalFrame(pixels_c=item.pixels_c, die_c=item.die_c, seq=self._seq, t=now, source=self.name)
            if len(self._queue) >= QUEUE_MAX:
                self._queue.popleft()
                self._frames_dropped += 1
            self._queue.append(frame)
            self._cond.notify_all()
