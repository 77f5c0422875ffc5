"""GY-MCU90640 (MLX90640 behind an STM32, UART) — byte protocol, streaming parser and serial driver.

Protocol (design/thermal.md §1.1):

* Temperature frame, 1544 bytes: ``5A 5A 02 06``, 768 pixel words, one die-temperature word (Ta), one
  checksum word. Every word is little-endian; pixels and Ta are signed °C × 100. The checksum is the low
  16 bits of the sum of the first 771 words read as unsigned (header words included).
* The module sends its pixel rows mirrored: pixel word ``k`` belongs to scene row ``k // 32``, column
  ``31 - k % 32`` (its first pixel is the upper-right one).
* Emissivity reply, 4 bytes: ``5A 5A EE SS`` with ``EE`` = emissivity × 100 and ``SS = (5A + 5A + EE) & FF``.
* Commands, 4 bytes: ``A5 cmd arg (A5 + cmd + arg) & FF``. The module needs ~100 ms to act on one.
* Link: 8N1 at 9600, 115200 (factory default) or 460800 baud; 10 bits on the wire per byte.

The frame layout lives in a ``ModuleProfile`` (data, not code) so that a second module family can reuse
``FrameParser``; only the GY-MCU90640 profile exists today.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import serial

from station.domain.model import ThermalFrame

log = logging.getLogger("station.thermal")

# --------------------------------------------------------------------------------------------
# Wire constants
# --------------------------------------------------------------------------------------------

ROWS = 24
COLS = 32
N_PIXELS = ROWS * COLS
SYNC = b"\x5a\x5a"
HEADER = b"\x5a\x5a\x02\x06"
FRAME_LEN = 1544
PIXEL_OFFSET = 4
DIE_OFFSET = 4 + 2 * N_PIXELS  # 1540
CHECKSUM_OFFSET = DIE_OFFSET + 2  # 1542
CHECKSUM_WORDS = 771  # header (2 words) + 768 pixels + Ta
CENTI = 100  # counts per °C for pixels and Ta
REPLY_LEN = 4
BITS_PER_BYTE = 10  # 8N1: start + 8 data + stop

CMD_PREFIX = 0xA5
CMD_BAUD = 0x15
CMD_REFRESH = 0x25
CMD_MODE = 0x35
CMD_SET_EMISSIVITY = 0x45
CMD_QUERY_EMISSIVITY = 0x55
CMD_SAVE = 0x65

MODE_QUERY = 0x01  # one frame per request; sending it also requests a frame
MODE_CONTINUOUS = 0x02

BAUD_ARGS: Mapping[int, int] = {9600: 0x01, 115200: 0x02, 460800: 0x03}
REFRESH_ARGS: Mapping[float, int] = {0.5: 0x00, 1.0: 0x01, 2.0: 0x02, 4.0: 0x03, 8.0: 0x04}
PROBE_ORDER: tuple[int, ...] = (115200, 460800, 9600)  # factory default first, then the 8 Hz speed

COMMAND_GAP_S = 0.1  # the module "needs a bit of time to react" to each command


def frame_time_s(baud: int) -> float:
    """Seconds one 1544-byte frame occupies the wire at ``baud`` (8N1)."""
    return FRAME_LEN * BITS_PER_BYTE / baud


def max_frame_rate(baud: int) -> float:
    """The most frames per second ``baud`` can carry; the refresh setting cannot exceed it."""
    return 1.0 / frame_time_s(baud)


# --------------------------------------------------------------------------------------------
# Pure codec functions
# --------------------------------------------------------------------------------------------


def checksum(words: bytes | bytearray | memoryview | np.ndarray | Sequence[int]) -> int:
    """Low 16 bits of the sum of the first 771 words, each taken as unsigned 16-bit.

    ``words`` is either the raw frame bytes (read as little-endian words) or a sequence of word
    values; negative values count as their two's-complement (so -550 counts as 0xFDDA).
    """
    if isinstance(words, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(words, dtype="<u2", count=CHECKSUM_WORDS).astype(np.int64)
    else:
        arr = np.asarray(words, dtype=np.int64)[:CHECKSUM_WORDS] & 0xFFFF
    return int(arr.sum()) & 0xFFFF


def encode_frame(pixels_module_order_centi: np.ndarray, ta_centi: int) -> bytes:
    """Build one 1544-byte temperature frame from 768 module-order pixel words (°C × 100) and Ta."""
    px = np.asarray(pixels_module_order_centi)
    if px.shape != (N_PIXELS,):
        raise ValueError(f"expected {N_PIXELS} pixel words, got shape {px.shape}")
    if px.size and (int(px.min()) < -0x8000 or int(px.max()) > 0x7FFF):
        raise ValueError("pixel words must fit int16")
    if not -0x8000 <= int(ta_centi) <= 0x7FFF:
        raise ValueError(f"Ta word {ta_centi} does not fit int16")
    body = HEADER + px.astype("<i2").tobytes() + int(ta_centi).to_bytes(2, "little", signed=True)
    return body + checksum(body).to_bytes(2, "little")


def image_to_module_order(img_c: np.ndarray) -> np.ndarray:
    """Scene-oriented (24, 32) °C image → the 768 int16 words the module sends (mirrored rows).

    Values are rounded to 0.01 °C and clipped to the int16 range, which is what a 16-bit wire word
    can carry; NaN is rejected because the module never sends one.
    """
    img = np.asarray(img_c, dtype=np.float64)
    if img.shape != (ROWS, COLS):
        raise ValueError(f"expected a ({ROWS}, {COLS}) image, got {img.shape}")
    if not np.all(np.isfinite(img)):
        raise ValueError("image contains NaN or inf")
    centi = np.clip(np.rint(img * CENTI), -0x8000, 0x7FFF).astype(np.int16)
    return np.ascontiguousarray(centi[:, ::-1]).reshape(N_PIXELS)


def module_order_to_image(words: np.ndarray) -> np.ndarray:
    """The inverse of ``image_to_module_order``: 768 words → (24, 32) float32 °C, scene orientation."""
    w = np.asarray(words)
    if w.shape != (N_PIXELS,):
        raise ValueError(f"expected {N_PIXELS} pixel words, got shape {w.shape}")
    return np.ascontiguousarray(w.reshape(ROWS, COLS)[:, ::-1]).astype(np.float32) / np.float32(CENTI)


# --------------------------------------------------------------------------------------------
# Commands (host → module)
# --------------------------------------------------------------------------------------------


def command(cmd: int, arg: int) -> bytes:
    """``A5 cmd arg sum`` with sum = (A5 + cmd + arg) & FF."""
    if not (0 <= cmd <= 0xFF and 0 <= arg <= 0xFF):
        raise ValueError(f"cmd and arg must be bytes, got {cmd!r}, {arg!r}")
    return bytes((CMD_PREFIX, cmd, arg, (CMD_PREFIX + cmd + arg) & 0xFF))


def parse_command(data: bytes) -> tuple[int, int] | None:
    """(cmd, arg) of a 4-byte command whose prefix and sum byte are right, else None."""
    if len(data) != 4 or data[0] != CMD_PREFIX:
        return None
    if (data[0] + data[1] + data[2]) & 0xFF != data[3]:
        return None
    return data[1], data[2]


def cmd_set_baud(baud: int) -> bytes:
    if baud not in BAUD_ARGS:
        raise ValueError(f"baud must be one of {sorted(BAUD_ARGS)}, got {baud}")
    return command(CMD_BAUD, BAUD_ARGS[baud])


def cmd_set_refresh(hz: float) -> bytes:
    if float(hz) not in REFRESH_ARGS:
        raise ValueError(f"refresh must be one of {sorted(REFRESH_ARGS)} Hz, got {hz}")
    return command(CMD_REFRESH, REFRESH_ARGS[float(hz)])


def cmd_query_mode() -> bytes:
    """Switch to query mode; every further copy of this command requests one frame."""
    return command(CMD_MODE, MODE_QUERY)


cmd_request_frame = cmd_query_mode


def cmd_continuous_mode() -> bytes:
    return command(CMD_MODE, MODE_CONTINUOUS)


def emissivity_arg(emissivity: float) -> int:
    """The command/reply byte for an emissivity: round(e × 100), 1…100."""
    arg = round(emissivity * 100)
    if not 1 <= arg <= 100:
        raise ValueError(f"emissivity must be in (0, 1.00], got {emissivity}")
    return arg


def cmd_set_emissivity(emissivity: float) -> bytes:
    return command(CMD_SET_EMISSIVITY, emissivity_arg(emissivity))


def cmd_query_emissivity() -> bytes:
    return command(CMD_QUERY_EMISSIVITY, 0x01)


def cmd_save() -> bytes:
    """Store baud, refresh, mode and emissivity in the module's flash (applied at next power-up)."""
    return command(CMD_SAVE, 0x01)


def emissivity_reply(arg: int) -> bytes:
    """The module's 4-byte answer to a query, ``5A 5A EE SS``."""
    if not 0 <= arg <= 0xFF:
        raise ValueError(f"reply byte out of range: {arg}")
    return bytes((0x5A, 0x5A, arg, (0x5A + 0x5A + arg) & 0xFF))


# --------------------------------------------------------------------------------------------
# Declarative frame layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameLayout:
    """Where the fields of one temperature frame sit and how they scale to °C."""

    header: bytes
    length: int
    rows: int
    cols: int
    pixel_offset: int
    pixel_dtype: str  # numpy dtype string incl. byte order
    counts_per_c: float
    offset_c: float  # added after scaling (e.g. -273.15 for a kelvin-based module)
    die_offset: int
    die_dtype: str
    mirror_columns: bool  # True when the module sends each row right-to-left
    checksum_ok: Callable[[bytes], bool]


@dataclass(frozen=True, slots=True)
class ReplyLayout:
    """A short reply that shares the frame's sync bytes; ``decode`` returns None if it is not one."""

    kind: str
    length: int
    decode: Callable[[bytes], float | None]


@dataclass(frozen=True, slots=True)
class Plausibility:
    """Limits a checksum-valid frame must also meet (the checksum is blind to some multi-byte errors)."""

    min_c: float
    max_c: float
    die_min_c: float
    die_max_c: float


@dataclass(frozen=True, slots=True)
class ModuleProfile:
    name: str
    sync: bytes  # prefix shared by every message the module sends
    frame: FrameLayout
    replies: tuple[ReplyLayout, ...]
    limits: Plausibility


def _gy_checksum_ok(frame: bytes) -> bool:
    stored = int.from_bytes(frame[CHECKSUM_OFFSET:FRAME_LEN], "little")
    return checksum(frame) == stored


def _gy_emissivity(reply: bytes) -> float | None:
    arg, total = reply[2], reply[3]
    if (0x5A + 0x5A + arg) & 0xFF != total or not 1 <= arg <= 100:
        return None
    return arg / 100.0


GY_MCU90640 = ModuleProfile(
    name="gy-mcu90640",
    sync=SYNC,
    frame=FrameLayout(
        header=HEADER,
        length=FRAME_LEN,
        rows=ROWS,
        cols=COLS,
        pixel_offset=PIXEL_OFFSET,
        pixel_dtype="<i2",
        counts_per_c=CENTI,
        offset_c=0.0,
        die_offset=DIE_OFFSET,
        die_dtype="<i2",
        mirror_columns=True,
        checksum_ok=_gy_checksum_ok,
    ),
    replies=(ReplyLayout(kind="emissivity", length=REPLY_LEN, decode=_gy_emissivity),),
    # The module's documented target range is -40…300 °C; the MLX90640 die works at -40…85 °C, and
    # 125 °C leaves room for a sensor in a hot enclosure. Outside these the frame is corrupt.
    limits=Plausibility(min_c=-40.0, max_c=300.0, die_min_c=-40.0, die_max_c=125.0),
)


# --------------------------------------------------------------------------------------------
# Streaming parser
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """A checksum-valid, plausible frame: scene-oriented pixels and the die temperature."""

    pixels_c: np.ndarray  # float32 (rows, cols), °C
    die_c: float
    raw: bytes  # the frame as received, for event records and replays


@dataclass(frozen=True, slots=True)
class ParsedReply:
    kind: str  # e.g. "emissivity"
    value: float
    raw: bytes


ParsedItem = DecodedFrame | ParsedReply


@dataclass(slots=True)
class ParserCounters:
    frames_ok: int = 0
    checksum_errors: int = 0
    resync_bytes: int = 0  # bytes thrown away while hunting for the next message
    implausible_frames: int = 0  # checksum-valid but physically impossible: counted and skipped
    replies: dict[str, int] = field(default_factory=dict)


class FrameParser:
    """Incremental parser: feed it bytes in any chunking, get whole messages back.

    Resync rule: after a checksum failure move ONE byte past the failed header and scan again. A
    dropped or inserted byte shortens or lengthens a frame, so skipping a whole frame length would
    also throw away the good frame that follows; one byte at a time loses only the damaged frame.
    """

    def __init__(self, profile: ModuleProfile = GY_MCU90640) -> None:
        self.profile = profile
        self.counters = ParserCounters(replies={r.kind: 0 for r in profile.replies})
        self._buf = bytearray()
        lengths = [len(profile.frame.header), *(r.length for r in profile.replies)]
        self._need = max(lengths)  # bytes needed after the sync to tell message kinds apart

    # counters as attributes, because they are what callers read most
    @property
    def frames_ok(self) -> int:
        return self.counters.frames_ok

    @property
    def checksum_errors(self) -> int:
        return self.counters.checksum_errors

    @property
    def resync_bytes(self) -> int:
        return self.counters.resync_bytes

    @property
    def implausible_frames(self) -> int:
        return self.counters.implausible_frames

    @property
    def emissivity_replies(self) -> int:
        return self.counters.replies.get("emissivity", 0)

    def counter_dict(self) -> dict[str, int]:
        c = self.counters
        out = {
            "frames_ok": c.frames_ok,
            "checksum_errors": c.checksum_errors,
            "resync_bytes": c.resync_bytes,
            "implausible_frames": c.implausible_frames,
        }
        out.update({f"{kind}_replies": n for kind, n in c.replies.items()})
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial message (link was re-opened); its bytes count as discarded."""
        self.counters.resync_bytes += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes) -> list[ParsedItem]:
        buf = self._buf
        buf += data
        out: list[ParsedItem] = []
        sync = self.profile.sync
        fl = self.profile.frame
        c = self.counters
        while True:
            i = buf.find(sync)
            if i < 0:
                keep = self._partial_sync_len()
                drop = len(buf) - keep
                if drop:
                    del buf[:drop]
                    c.resync_bytes += drop
                break
            if i:
                del buf[:i]
                c.resync_bytes += i
            if len(buf) < self._need:
                break
            if buf.startswith(fl.header):
                if len(buf) < fl.length:
                    break
                raw = bytes(buf[: fl.length])
                if not fl.checksum_ok(raw):
                    c.checksum_errors += 1
                    del buf[:1]
                    c.resync_bytes += 1
                    continue
                del buf[: fl.length]
                frame = self._decode(raw)
                if frame is None:
                    c.implausible_frames += 1
                else:
                    c.frames_ok += 1
                    out.append(frame)
                continue
            reply = self._match_reply(buf)
            if reply is not None:
                del buf[: len(reply.raw)]
                c.replies[reply.kind] = c.replies.get(reply.kind, 0) + 1
                out.append(reply)
                continue
            del buf[:1]  # a sync pair that starts nothing we know
            c.resync_bytes += 1
        return out

    def _partial_sync_len(self) -> int:
        """Length of the longest tail of the buffer that could be the start of the sync bytes."""
        sync = self.profile.sync
        for n in range(min(len(sync) - 1, len(self._buf)), 0, -1):
            if self._buf.endswith(sync[:n]):
                return n
        return 0

    def _match_reply(self, buf: bytearray) -> ParsedReply | None:
        for r in self.profile.replies:
            if len(buf) < r.length:
                continue
            raw = bytes(buf[: r.length])
            value = r.decode(raw)
            if value is not None:
                return ParsedReply(kind=r.kind, value=value, raw=raw)
        return None

    def _decode(self, raw: bytes) -> DecodedFrame | None:
        fl = self.profile.frame
        lim = self.profile.limits
        n = fl.rows * fl.cols
        counts = np.frombuffer(raw, dtype=fl.pixel_dtype, count=n, offset=fl.pixel_offset).reshape(fl.rows, fl.cols)
        die_count = int(np.frombuffer(raw, dtype=fl.die_dtype, count=1, offset=fl.die_offset)[0])
        die_c = die_count / fl.counts_per_c + fl.offset_c
        if not counts.any():
            return None  # an all-zero frame is a module that has lost its sensor, not a 0 °C scene
        if fl.mirror_columns:
            counts = counts[:, ::-1]
        pixels = np.ascontiguousarray(counts).astype(np.float32) / np.float32(fl.counts_per_c)
        if fl.offset_c:
            pixels += np.float32(fl.offset_c)
        if float(pixels.min()) < lim.min_c or float(pixels.max()) > lim.max_c:
            return None
        if not lim.die_min_c <= die_c <= lim.die_max_c:
            return None
        return DecodedFrame(pixels_c=pixels, die_c=die_c, raw=raw)


# --------------------------------------------------------------------------------------------
# Serial port helpers
# --------------------------------------------------------------------------------------------

BY_ID_DIR = "/dev/serial/by-id"


def resolve_port(path: str, by_id_dir: str = BY_ID_DIR) -> str:
    """The /dev/serial/by-id link that points at ``path``, or ``path`` itself if there is none.

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
    """The module could not be reached: port missing, locked, or no valid frame at any speed."""


# --------------------------------------------------------------------------------------------
# The ThermalSource adapter
# --------------------------------------------------------------------------------------------

RATE_FRAMES = 8  # frames (7 intervals) used to measure the real output rate after (re)configuring
RATE_TOLERANCE = 0.20
READ_TIMEOUT_S = 0.05
WRITE_TIMEOUT_S = 0.5
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0


class GyMcu90640Source:
    """``ThermalSource`` for a GY-MCU90640 on a serial port.

    ``start()`` opens the port, finds the module's baud rate if ``baud`` is None, configures refresh
    rate, emissivity and output mode, and starts a reader thread. ``read_frame`` hands out the
    freshest frame (a queue of two; older frames are dropped and counted, because a screening
    decision must use the newest image, not a backlog).

    A stall (no checksum-valid frame for ``stall_factor`` frame periods, at least 1 s) or a read
    error (USB unplug) closes the port and reopens it with backoff until ``stop()``; on every
    reconnect the settings are sent again, since a power-cycled module forgets unsaved ones.
    ``port_resolver``, if given, is asked for the path before every open. On real hardware a
    /dev/serial/by-id path (see ``resolve_port``; applied automatically to ``port``) already survives
    replugs; the resolver is for devices whose path really changes, such as a re-created pty.

    Implausible frames (checksum-valid but physically impossible) prove the link is alive, so they
    reset the stall timer; they are counted in ``implausible_frames`` and never delivered.

    With ``continuous=False`` the module is put in query mode and the reader thread requests one
    frame per refresh period, so the host sets the pace.

    ``stats()["state"]`` is one of: probing, connected, reconnecting, stopped, failed (the reader
    thread crashed — a bug, logged with its traceback). ``observed_hz`` is 0.0 until the first
    ``RATE_FRAMES`` frames after (re)configuring have been timed; ``module_emissivity`` is 0.0 until
    ``query_emissivity`` got an answer.

    With ``require_link_at_start=False`` a module that cannot be reached at start-up is logged and
    then looked for in the background like an unplugged one, instead of failing ``start()``: a gate
    whose module is missing keeps running (every screening ends in ``manual_check``) and says so,
    rather than restarting in a loop.
    """

    def __init__(
        self,
        port: str,
        baud: int | None = None,
        refresh_hz: float = 4.0,
        emissivity: float = 0.98,
        continuous: bool = True,
        stall_factor: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "gy-mcu90640",
        *,
        port_resolver: Callable[[], str] | None = None,
        probe_window_s: float | None = None,
        command_gap_s: float = COMMAND_GAP_S,
        require_link_at_start: bool = True,
    ) -> None:
        if baud is not None and baud not in BAUD_ARGS:
            raise ValueError(f"baud must be one of {sorted(BAUD_ARGS)} or None, got {baud}")
        if float(refresh_hz) not in REFRESH_ARGS:
            raise ValueError(f"refresh_hz must be one of {sorted(REFRESH_ARGS)}, got {refresh_hz}")
        emissivity_arg(emissivity)  # validates
        if stall_factor <= 0:
            raise ValueError("stall_factor must be positive")
        self.name = name
        self._port_given = port
        self._port = port  # the path in use (by-id form once resolved)
        self._fixed_baud = baud
        self._baud: int | None = baud
        self._refresh_hz = float(refresh_hz)
        self._emissivity = emissivity
        self._continuous = continuous
        self._stall_factor = stall_factor
        self._clock = clock
        self._resolver = port_resolver
        self._probe_window_s = probe_window_s
        self._command_gap_s = command_gap_s
        self._require_link = require_link_at_start

        self._parser = FrameParser(GY_MCU90640)
        self._ser: serial.Serial | None = None
        self._write_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: deque[ThermalFrame] = deque()
        self._queue_max = 2
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        self._state = "stopped"
        self._seq = 0
        self._frames_dropped = 0
        self._stalls = 0
        self._reconnects = 0
        self._read_errors = 0
        self._open_failures = 0
        self._consecutive_failures = 0
        self._last_valid_t = 0.0
        self._next_request_t = 0.0  # query mode: when to ask for the next frame
        self._observed_hz = 0.0
        self._rate_ok = False
        self._rate_from_t = 0.0
        self._rate_samples: list[float] = []
        self._emissivity_seen = 0
        self._module_emissivity = 0.0

    # -- ThermalSource -----------------------------------------------------------------------
    def start(self) -> None:
        """Open, probe and configure the module, then start reading. Raises ThermalLinkError."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stop.clear()
        self._set_state("probing")
        if self._resolver is None:
            self._port = resolve_port(self._port_given)  # resolved while the device is present
        problem: ThermalLinkError | None = None
        try:
            self._connect()
        except (serial.SerialException, OSError) as exc:
            problem = ThermalLinkError(f"cannot open {self._port}: {exc}")
        if problem is None and self._ser is None:
            problem = ThermalLinkError(f"no GY-MCU90640 frame on {self._port} at any of {self._probe_list()} baud")
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
                self._consecutive_failures += 1
            self._set_state("reconnecting")
        self._thread = threading.Thread(target=self._run, name=f"thermal-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
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
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while not self._queue:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(left)
            return self._queue.popleft()

    def stats(self) -> dict[str, int | float | str]:
        with self._stats_lock:
            out: dict[str, int | float | str] = dict(self._parser.counter_dict())
            age = self._clock() - self._last_valid_t if self._last_valid_t else -1.0
            out.update(
                state=self._state,
                port=self._port,
                baud=self._baud or 0,
                refresh_hz=self._refresh_hz,
                observed_hz=round(self._observed_hz, 3),
                rate_ok=self._rate_ok,
                frames_dropped=self._frames_dropped,
                stalls=self._stalls,
                reconnects=self._reconnects,
                read_errors=self._read_errors,
                open_failures=self._open_failures,
                last_frame_age_s=round(age, 3),
                module_emissivity=self._module_emissivity,
            )
            return out

    # -- extra operations -----------------------------------------------------------------------
    def query_emissivity(self, timeout: float = 1.0) -> float | None:
        """Ask the module for its emissivity; None if no reply arrived within ``timeout``."""
        with self._cond:
            seen = self._emissivity_seen
        if not self._send(cmd_query_emissivity()):
            return None
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._emissivity_seen == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._module_emissivity

    # -- link management -----------------------------------------------------------------------
    def _probe_list(self) -> list[int]:
        if self._fixed_baud is not None:
            return [self._fixed_baud]
        first = [self._baud] if self._baud else []
        return first + [b for b in PROBE_ORDER if b not in first]

    def _probe_window(self, baud: int) -> float:
        """Long enough for the module to react, finish a frame in flight and send a requested one."""
        if self._probe_window_s is not None:
            return self._probe_window_s
        return self._command_gap_s + 2 * frame_time_s(baud) + 1.0 / self._refresh_hz + 0.2

    def _connect(self) -> None:
        """One attempt: open, find the speed, configure. Leaves ``_ser`` set only on success."""
        path = self._resolver() if self._resolver is not None else self._port
        self._port = path
        ser = serial.Serial(
            path,
            self._baud or PROBE_ORDER[0],
            timeout=READ_TIMEOUT_S,
            write_timeout=WRITE_TIMEOUT_S,
            exclusive=True,
        )
        try:
            baud = self._fixed_baud if self._fixed_baud is not None else self._probe(ser)
            if baud is None:
                ser.close()
                return
            if ser.baudrate != baud:
                ser.baudrate = baud
            self._configure(ser)
        except (serial.SerialException, OSError):
            ser.close()
            raise
        with self._stats_lock:
            self._baud = baud
            self._rate_samples = []
            self._rate_from_t = self._clock() + self._command_gap_s
            self._last_valid_t = self._clock()
            self._next_request_t = self._clock()
        self._parser.reset()
        ser.reset_input_buffer()
        with self._write_lock:
            self._ser = ser
        self._set_state("connected")
        log.info(
            "thermal link up port=%s baud=%d refresh_hz=%s emissivity=%.2f",
            path,
            baud,
            self._refresh_hz,
            self._emissivity,
            extra={"thermal": {"event": "link_up", "port": path, "baud": baud}},
        )
        if self._refresh_hz > max_frame_rate(baud):
            log.warning(
                "thermal refresh exceeds link capacity refresh_hz=%s baud=%d max_hz=%.2f",
                self._refresh_hz,
                baud,
                max_frame_rate(baud),
                extra={"thermal": {"event": "rate_capped", "baud": baud}},
            )

    def _probe(self, ser: serial.Serial) -> int | None:
        """First baud rate at which a checksum-valid frame arrives within the probe window.

        Each attempt also requests a single frame, so a module saved in query mode or at 0.5 Hz
        answers within the window too; ``_configure`` then puts it back in the wanted mode.
        """
        for baud in self._probe_list():
            if self._stop.is_set():
                return None
            ser.baudrate = baud
            ser.reset_input_buffer()
            ser.write(cmd_request_frame())
            parser = FrameParser(GY_MCU90640)
            deadline = self._clock() + self._probe_window(baud)
            while self._clock() < deadline and not self._stop.is_set():
                parser.feed(ser.read(ser.in_waiting or 1))
                if parser.frames_ok or parser.implausible_frames:
                    log.info(
                        "thermal baud found port=%s baud=%d", self._port, baud, extra={"thermal": {"event": "baud_found", "baud": baud}}
                    )
                    return baud
            log.info(
                "thermal probe miss port=%s baud=%d resync_bytes=%d",
                self._port,
                baud,
                parser.resync_bytes,
                extra={"thermal": {"event": "probe_miss", "baud": baud}},
            )
        return None

    def _configure(self, ser: serial.Serial) -> None:
        commands = [
            cmd_set_refresh(self._refresh_hz),
            cmd_set_emissivity(self._emissivity),
            cmd_continuous_mode() if self._continuous else cmd_query_mode(),
        ]
        for cmd in commands:
            ser.write(cmd)
            if self._stop.wait(self._command_gap_s):
                return

    def _close(self) -> None:
        with self._write_lock:
            ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError) as exc:
                log.warning("thermal close failed port=%s error=%s", self._port, exc)

    def _send(self, data: bytes) -> bool:
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
        with self._stats_lock:
            self._consecutive_failures += 1
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
            n = self._consecutive_failures
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * (2 ** max(0, n - 1)))
            if self._stop.wait(delay):
                return
            self._set_state("probing" if self._fixed_baud is None else "reconnecting")
            try:
                self._connect()
            except (serial.SerialException, OSError) as exc:
                with self._stats_lock:
                    self._open_failures += 1
                    self._consecutive_failures += 1
                self._set_state("reconnecting")
                log.info(
                    "thermal reopen failed port=%s error=%s",
                    self._port,
                    exc,
                    extra={"thermal": {"event": "reopen_failed", "port": self._port}},
                )
                continue
            if self._ser is not None:
                with self._stats_lock:
                    self._reconnects += 1
                return
            with self._stats_lock:
                self._consecutive_failures += 1
            self._set_state("reconnecting")

    def _stall_timeout(self) -> float:
        period = 1.0 / self._refresh_hz
        if self._baud:
            period = max(period, frame_time_s(self._baud))
        return max(1.0, self._stall_factor * period)

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
            if not self._continuous and now >= self._next_request_t:
                self._next_request_t = max(self._next_request_t + 1.0 / self._refresh_hz, now)
                self._send(cmd_request_frame())
            if now - self._last_valid_t > self._stall_timeout():
                with self._stats_lock:
                    self._stalls += 1
                self._link_lost("stall", silent_s=round(now - self._last_valid_t, 2))

    def _handle(self, items: list[ParsedItem], now: float) -> None:
        for item in items:
            if isinstance(item, ParsedReply):
                with self._cond:
                    self._module_emissivity = item.value
                    self._emissivity_seen += 1
                    self._cond.notify_all()
                continue
            with self._stats_lock:
                self._last_valid_t = now
                self._consecutive_failures = 0
                self._note_rate(now)
            with self._cond:
                self._seq += 1
                frame = ThermalFrame(pixels_c=item.pixels_c, die_c=item.die_c, seq=self._seq, t=now, source=self.name)
                if len(self._queue) >= self._queue_max:
                    self._queue.popleft()
                    self._frames_dropped += 1
                self._queue.append(frame)
                self._cond.notify_all()

    def _note_rate(self, now: float) -> None:
        """Measure the output rate once per (re)configuration; warn, never fail, if it is off."""
        if len(self._rate_samples) >= RATE_FRAMES or now < self._rate_from_t:
            return
        self._rate_samples.append(now)
        if len(self._rate_samples) < RATE_FRAMES:
            return
        span = self._rate_samples[-1] - self._rate_samples[0]
        self._observed_hz = (RATE_FRAMES - 1) / span if span > 0 else 0.0
        self._rate_ok = abs(self._observed_hz - self._refresh_hz) <= RATE_TOLERANCE * self._refresh_hz
        if self._rate_ok:
            log.info(
                "thermal rate observed_hz=%.2f refresh_hz=%s",
                self._observed_hz,
                self._refresh_hz,
                extra={"thermal": {"event": "rate", "observed_hz": self._observed_hz}},
            )
        else:
            log.warning(
                "thermal rate off observed_hz=%.2f refresh_hz=%s baud=%s",
                self._observed_hz,
                self._refresh_hz,
                self._baud,
                extra={"thermal": {"event": "rate_off", "observed_hz": self._observed_hz}},
            )
