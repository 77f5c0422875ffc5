"""GY-MCU90640 (MLX90640 behind an STM32, UART) byte protocol, and the profile-driven streaming parser.

Pure code: no serial port, no threads (the serial source is ``drivers.thermal.gy_mcu90640``).

Protocol (design/thermal.md §1.1):

* Temperature frame, 1544 bytes: ``5A 5A 02 06``, 768 pixel words, one die-temperature word (Ta), one
  checksum word. Every word is little-endian; pixels and Ta are signed °C × 100. The checksum is the low
  16 bits of the sum of the first 771 words read as unsigned (header words included).
* The module sends its pixel rows mirrored: pixel word ``k`` belongs to scene row ``k // 32``, column
  ``31 - k % 32`` (its first pixel is the upper-right one).
* Emissivity reply, 4 bytes: ``5A 5A EE SS`` with ``EE`` = emissivity × 100 and ``SS = (5A + 5A + EE) & FF``.
* Commands, 4 bytes: ``A5 cmd arg (A5 + cmd + arg) & FF``. The module needs ~100 ms to act on one.
* Link: 8N1 at 9600, 115200 (factory default) or 460800 baud; 10 bits on the wire per byte.

The frame layout lives in a ``ModuleProfile`` (data, not code), so a second module family reuses
``FrameParser`` with its own profile (``drivers.thermal.htpa_protocol``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

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
    """Return the seconds one 1544-byte frame occupies the wire at ``baud`` (8N1)."""
    return FRAME_LEN * BITS_PER_BYTE / baud


def max_frame_rate(baud: int) -> float:
    """Return the most frames per second ``baud`` can carry; the refresh setting cannot exceed it."""
    return 1.0 / frame_time_s(baud)


# --------------------------------------------------------------------------------------------
# Pure codec functions
# --------------------------------------------------------------------------------------------


def checksum(words: bytes | bytearray | memoryview | np.ndarray | Sequence[int]) -> int:
    """Return the low 16 bits of the sum of the first 771 words, each taken as unsigned 16-bit.

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
    """Turn a scene-oriented (24, 32) °C image into the 768 int16 words the module sends (mirrored rows).

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
    """Turn 768 module-order words back into a (24, 32) float32 °C image, scene orientation (the inverse)."""
    w = np.asarray(words)
    if w.shape != (N_PIXELS,):
        raise ValueError(f"expected {N_PIXELS} pixel words, got shape {w.shape}")
    return np.ascontiguousarray(w.reshape(ROWS, COLS)[:, ::-1]).astype(np.float32) / np.float32(CENTI)


# --------------------------------------------------------------------------------------------
# Commands (host → module)
# --------------------------------------------------------------------------------------------


def command(cmd: int, arg: int) -> bytes:
    """Return the command ``A5 cmd arg sum`` with sum = (A5 + cmd + arg) & FF."""
    if not (0 <= cmd <= 0xFF and 0 <= arg <= 0xFF):
        raise ValueError(f"cmd and arg must be bytes, got {cmd!r}, {arg!r}")
    return bytes((CMD_PREFIX, cmd, arg, (CMD_PREFIX + cmd + arg) & 0xFF))


def parse_command(data: bytes) -> tuple[int, int] | None:
    """Return (cmd, arg) of a 4-byte command whose prefix and sum byte are right, else None."""
    if len(data) != 4 or data[0] != CMD_PREFIX:
        return None
    if (data[0] + data[1] + data[2]) & 0xFF != data[3]:
        return None
    return data[1], data[2]


def cmd_set_baud(baud: int) -> bytes:
    """Return the command that sets the link speed (applied at once; the host must follow)."""
    if baud not in BAUD_ARGS:
        raise ValueError(f"baud must be one of {sorted(BAUD_ARGS)}, got {baud}")
    return command(CMD_BAUD, BAUD_ARGS[baud])


def cmd_set_refresh(hz: float) -> bytes:
    """Return the command that sets the frame rate."""
    if float(hz) not in REFRESH_ARGS:
        raise ValueError(f"refresh must be one of {sorted(REFRESH_ARGS)} Hz, got {hz}")
    return command(CMD_REFRESH, REFRESH_ARGS[float(hz)])


def cmd_query_mode() -> bytes:
    """Return the command that switches to query mode; every further copy requests one frame."""
    return command(CMD_MODE, MODE_QUERY)


cmd_request_frame = cmd_query_mode


def cmd_continuous_mode() -> bytes:
    """Return the command that makes the module send frames continuously."""
    return command(CMD_MODE, MODE_CONTINUOUS)


def emissivity_arg(emissivity: float) -> int:
    """Return the command/reply byte for an emissivity: round(e × 100), 1…100."""
    arg = round(emissivity * 100)
    if not 1 <= arg <= 100:
        raise ValueError(f"emissivity must be in (0, 1.00], got {emissivity}")
    return arg


def cmd_set_emissivity(emissivity: float) -> bytes:
    """Return the command that sets the emissivity the module applies."""
    return command(CMD_SET_EMISSIVITY, emissivity_arg(emissivity))


def cmd_query_emissivity() -> bytes:
    """Return the command that asks for the emissivity (answered by ``emissivity_reply``)."""
    return command(CMD_QUERY_EMISSIVITY, 0x01)


def cmd_save() -> bytes:
    """Return the command that stores baud, refresh, mode and emissivity in flash (applied at next power-up)."""
    return command(CMD_SAVE, 0x01)


def emissivity_reply(arg: int) -> bytes:
    """Return the module's 4-byte answer to an emissivity query, ``5A 5A EE SS``."""
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
    """Everything ``FrameParser`` needs to know about one module family."""

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
    """A short reply to a command, decoded."""

    kind: str  # e.g. "emissivity"
    value: float
    raw: bytes


ParsedItem = DecodedFrame | ParsedReply


@dataclass(slots=True)
class ParserCounters:
    """What the parser has seen since it was made."""

    frames_ok: int = 0
    checksum_errors: int = 0
    resync_bytes: int = 0  # bytes thrown away while hunting for the next message
    implausible_frames: int = 0  # checksum-valid but physically impossible: counted and skipped
    replies: dict[str, int] = field(default_factory=dict)


class FrameParser:
    """Incremental parser: feed it bytes in any chunking, get whole messages back.

    Total: any bytes give a list of valid messages, never an exception; what is thrown away is counted.
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
        """Return how many valid frames were delivered."""
        return self.counters.frames_ok

    @property
    def checksum_errors(self) -> int:
        """Return how many frames failed their checksum."""
        return self.counters.checksum_errors

    @property
    def resync_bytes(self) -> int:
        """Return how many bytes were thrown away while hunting for the next message."""
        return self.counters.resync_bytes

    @property
    def implausible_frames(self) -> int:
        """Return how many checksum-valid frames were physically impossible (skipped)."""
        return self.counters.implausible_frames

    @property
    def emissivity_replies(self) -> int:
        """Return how many emissivity replies were decoded."""
        return self.counters.replies.get("emissivity", 0)

    def counter_dict(self) -> dict[str, int]:
        """Return the counters as a flat dict, one ``<kind>_replies`` entry per reply kind."""
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
        """Return how many bytes wait for the rest of their message."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial message (link was re-opened); its bytes count as discarded."""
        self.counters.resync_bytes += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes) -> list[ParsedItem]:
        """Add ``data`` and return every whole message it completes, in order."""
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
