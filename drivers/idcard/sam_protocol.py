"""The SAM serial protocol of resident ID card readers (SAM-V modules), bytes only: no serial, no threads.

Every frame, in both directions::

    AA AA AA 96 69 | LEN (2 bytes, big-endian) | body | CHK

``LEN`` counts the body and the checksum byte; ``CHK`` is the XOR of the two ``LEN`` bytes and every
body byte. A command's body is ``CMD PARA [data]``; a reply's body is ``SW1 SW2 SW3 [data]`` where
``SW3`` is the status (``0x90`` done, ``0x9F`` card found, ``0x80`` find failed, …; see
``STATUS_TEXT``). ``SW1 SW2`` are ``00 00`` on every module seen.

``FrameParser`` is total: any bytes, in any chunks, give frames and problems with a reason (garbage
before a preamble, a length out of range, a bad checksum, a frame cut short), never an exception.
After a damaged frame it looks for the next preamble one byte after the damaged one's start, so a
frame that only looked like one cannot hide the real frames behind it.

``decode_base_info`` turns the "read base info" reply into what the station may keep: the ID number
goes through a hasher and a mask at once and is not held; name, sex, nation, birth date, address,
issuing authority and the photo are never decoded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from station.codes.idcard import CardFacts, mask_id

PREAMBLE = bytes((0xAA, 0xAA, 0xAA, 0x96, 0x69))
HEADER_LEN = len(PREAMBLE) + 2  # preamble + LEN
MIN_LEN = 3  # a command: CMD PARA CHK
MAX_LEN = 4096  # the longest reply (base info with fingerprints) is 2321 bytes

# Commands: (CMD, PARA)
RESET_SAM = (0x10, 0xFF)
SAM_STATUS = (0x11, 0xFF)
FIND_CARD = (0x20, 0x01)
SELECT_CARD = (0x20, 0x02)
READ_BASE_INFO = (0x30, 0x01)

# SW3 status bytes
SW_OK = 0x90
SW_NO_CONTENT = 0x91
SW_FOUND = 0x9F
SW_FIND_FAILED = 0x80
SW_SELECT_FAILED = 0x81
SW_CHECKSUM = 0x10
SW_LENGTH = 0x11
SW_COMMAND = 0x21
SW_READ_FAILED = 0x41
SW_SAM_SELFTEST = 0x60

STATUS_TEXT = {
    0x90: "ok",
    0x91: "no_content",
    0x9F: "card_found",
    0x10: "checksum_error",
    0x11: "length_error",
    0x21: "command_error",
    0x23: "not_authorised",
    0x24: "unrecognised_error",
    0x31: "card_authentication_failed",
    0x32: "sam_authentication_failed",
    0x33: "verification_error",
    0x40: "card_type_unknown",
    0x41: "read_failed",
    0x47: "random_failed",
    0x60: "sam_selftest_failed",
    0x66: "sam_not_authorised",
    0x80: "find_failed",
    0x81: "select_failed",
}

# Base info text: UCS-2LE fields, in bytes
TEXT_LEN = 256
PHOTO_LEN = 1024
FIELDS = (
    ("name", 30),
    ("sex", 2),
    ("nation", 4),
    ("birth", 16),
    ("address", 70),
    ("id_number", 36),
    ("authority", 30),
    ("valid_from", 16),
    ("valid_to", 16),
    ("reserved", 36),
)
_OFFSETS: dict[str, tuple[int, int]] = {}
_at = 0
for _name, _size in FIELDS:
    _OFFSETS[_name] = (_at, _at + _size)
    _at += _size
assert _at == TEXT_LEN
LONG_TERM = "长期"  # valid_to of a card that does not expire


def checksum(data: bytes) -> int:
    """Return the XOR of ``data``: what ``CHK`` is over ``LEN`` and the body."""
    x = 0
    for b in data:
        x ^= b
    return x


def encode_frame(body: bytes) -> bytes:
    """Return the whole frame that carries ``body`` (a command's CMD PARA data or a reply's SW1 SW2 SW3 data)."""
    if not 2 <= len(body) <= MAX_LEN - 1:
        raise ValueError(f"body of {len(body)} bytes does not fit a frame")
    length = (len(body) + 1).to_bytes(2, "big")
    return PREAMBLE + length + body + bytes((checksum(length + body),))


def command(cmd: tuple[int, int], data: bytes = b"") -> bytes:
    """Return the frame of one command, e.g. ``command(FIND_CARD)``."""
    return encode_frame(bytes(cmd) + data)


def reply(sw3: int, data: bytes = b"") -> bytes:
    """Return the frame of one reply with status ``sw3`` (SW1 SW2 are 00 00)."""
    return encode_frame(bytes((0x00, 0x00, sw3)) + data)


@dataclass(frozen=True, slots=True)
class Frame:
    """One checksum-valid frame: its body (between LEN and CHK)."""

    body: bytes

    @property
    def status(self) -> int:
        """Return SW3 when the frame is a reply (-1 when the body is too short for one)."""
        return self.body[2] if len(self.body) >= 3 else -1

    @property
    def reply_data(self) -> bytes:
        """Return the data after SW1 SW2 SW3 of a reply."""
        return self.body[3:]

    @property
    def command(self) -> tuple[int, int]:
        """Return (CMD, PARA) when the frame is a command."""
        return (self.body[0], self.body[1])

    def __repr__(self) -> str:
        # A base-info body carries a person's identity: never print it (logs, test failures).
        return f"Frame(len={len(self.body)}, head={self.body[:3].hex()})"


@dataclass(frozen=True, slots=True)
class Problem:
    """Bytes the parser could not take as a frame, and why (garbage, bad_length, bad_checksum, truncated)."""

    reason: str
    n_bytes: int


ParsedItem = Frame | Problem


class FrameParser:
    """Turn a byte stream into frames and problems; total (any bytes, any chunking), with counters."""

    def __init__(self, max_len: int = MAX_LEN) -> None:
        self.max_len = max_len
        self._buf = bytearray()
        self.frames = 0
        self.problems: dict[str, int] = {}
        self.garbage_bytes = 0

    def pending(self) -> int:
        """Return how many bytes wait for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget any partial frame (a new transaction, a reopened port)."""
        self._buf.clear()

    def feed(self, data: bytes) -> list[ParsedItem]:
        """Take more bytes; return the frames and problems they completed."""
        self._buf += data
        return self._scan(final=False)

    def flush(self) -> list[ParsedItem]:
        """Give up on a frame still incomplete (no more bytes are coming); look for frames in what it held."""
        return self._scan(final=True)

    def _problem(self, out: list[ParsedItem], reason: str, n: int) -> None:
        if n <= 0:
            return
        self.problems[reason] = self.problems.get(reason, 0) + 1
        if reason == "garbage":
            self.garbage_bytes += n
        out.append(Problem(reason, n))

    def _scan(self, *, final: bool) -> list[ParsedItem]:
        out: list[ParsedItem] = []
        buf = self._buf
        while buf:
            start = buf.find(PREAMBLE)
            if start < 0:
                # Keep a tail that may be the start of a preamble; the rest is garbage.
                keep = 0
                for k in range(min(len(PREAMBLE) - 1, len(buf)), 0, -1):
                    if buf.endswith(PREAMBLE[:k]):
                        keep = k
                        break
                if final:
                    keep = 0
                self._problem(out, "garbage", len(buf) - keep)
                del buf[: len(buf) - keep]
                break
            self._problem(out, "garbage", start)
            del buf[:start]
            if len(buf) < HEADER_LEN:
                if final:
                    self._problem(out, "truncated", len(buf))
                    buf.clear()
                break
            length = int.from_bytes(buf[5:7], "big")
            if not MIN_LEN <= length <= self.max_len:
                self._problem(out, "bad_length", 1)
                del buf[:1]  # look for the next preamble after this one's first byte
                continue
            total = HEADER_LEN + length
            if len(buf) < total:
                if not final:
                    break
                self._problem(out, "truncated", 1)
                del buf[:1]
                continue
            body = bytes(buf[HEADER_LEN : total - 1])
            if checksum(bytes(buf[5 : total - 1])) != buf[total - 1]:
                self._problem(out, "bad_checksum", 1)
                del buf[:1]
                continue
            del buf[:total]
            self.frames += 1
            out.append(Frame(body))
        return out

    def counter_dict(self) -> dict[str, int]:
        """Return the counters: frames, garbage bytes, problems per reason."""
        return {"frames": self.frames, "garbage_bytes": self.garbage_bytes, **{f"problem_{k}": v for k, v in self.problems.items()}}


# -- base info ----------------------------------------------------------------------------------


def _field(text: bytes, name: str) -> str | None:
    a, b = _OFFSETS[name]
    try:
        return text[a:b].decode("utf-16-le").strip(" \x00")
    except UnicodeDecodeError:
        return None


def _date(value: str | None) -> dt.date | None:
    if value is None or len(value) != 8 or not (value.isascii() and value.isdigit()):  # "²" and "٣" are digits too
        return None
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def _id_ok(value: str | None) -> bool:
    # ASCII only: str.isdigit() also accepts "²" or "٣", which no card prints.
    return (
        value is not None and len(value) == 18 and value.isascii() and value[:17].isdigit() and (value[17].isdigit() or value[17] in "Xx")
    )


HashFn = Callable[[str], str]
TraceFn = Callable[[str], tuple[str, str] | None]
"""The ID number's reference under the district key and that key's id (station.codes.trace_key), or None."""


def decode_base_info(data: bytes, hasher: HashFn, hash_key: str, tracer: TraceFn | None = None) -> CardFacts | str:
    """Return the card facts of a base-info reply's data, or the reason it cannot be read.

    ``data`` is the reply after SW1 SW2 SW3: text length (2 bytes, big-endian), photo length, the
    text, the photo. Only the ID number and the two validity dates are decoded; the ID number is
    handed to ``hasher`` (and ``tracer``, when given) and masked here, and only those results are returned.
    """
    if len(data) < 4:
        return "short_reply"
    text_len = int.from_bytes(data[0:2], "big")
    photo_len = int.from_bytes(data[2:4], "big")
    if text_len != TEXT_LEN or len(data) < 4 + text_len + photo_len:
        return "bad_layout"
    text = data[4 : 4 + TEXT_LEN]
    number = _field(text, "id_number")
    if not _id_ok(number):
        return "bad_id_number"
    assert number is not None
    valid_from = _date(_field(text, "valid_from"))
    to_text = _field(text, "valid_to")
    valid_to = None if to_text is not None and to_text.startswith(LONG_TERM) else _date(to_text)
    if valid_from is None or (valid_to is None and not (to_text or "").startswith(LONG_TERM)):
        return "bad_dates"
    traced = tracer(number.upper()) if tracer is not None else None
    return CardFacts(
        hasher(number.upper()),
        mask_id(number.upper()),
        hash_key,
        valid_from,
        valid_to,
        trace_ref=traced[0] if traced else None,
        trace_key=traced[1] if traced else None,
    )


def encode_base_info(
    *,
    name: str,
    sex: str,
    nation: str,
    birth: str,
    address: str,
    id_number: str,
    authority: str,
    valid_from: str,
    valid_to: str,
    photo: bytes = b"",
) -> bytes:
    """Return a base-info reply's data for these fields (the emulator's cards; golden vectors)."""
    values = {
        "name": name,
        "sex": sex,
        "nation": nation,
        "birth": birth,
        "address": address,
        "id_number": id_number,
        "authority": authority,
        "valid_from": valid_from,
        "valid_to": valid_to,
        "reserved": "",
    }
    text = b""
    for field_name, size in FIELDS:
        raw = values[field_name].encode("utf-16-le")
        if len(raw) > size:
            raise ValueError(f"{field_name} longer than {size // 2} characters")
        text += raw + " ".encode("utf-16-le") * ((size - len(raw)) // 2)
    photo = (photo + bytes(PHOTO_LEN))[:PHOTO_LEN]
    return TEXT_LEN.to_bytes(2, "big") + PHOTO_LEN.to_bytes(2, "big") + text + photo
