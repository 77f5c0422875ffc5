"""Emulate a resident ID card reader (SAM module) byte for byte on a pseudo-terminal, for the demo and tests.

The emulator owns a pty; the station's reader opens ``emulator.port`` (the slave side) like the real
module's serial port. Commands are parsed with the station's own frame parser (they are the same
frames) and answered with the module's exact reply frames, paced at the baud rate (10 bits a byte:
a base-info reply of 1295 bytes takes ~112 ms at 115200 baud, as on the wire).

The card on the reader is one ``EmulatedCard`` (made-up test people only) or none. Faults, each as a
real reader shows it:

* no card: find card answers ``0x80``;
* ``sam_busy(s)``: the SAM answers nothing for ``s`` seconds (it is still working on something);
* ``corrupt_replies(n)``: the next ``n`` replies carry a wrong checksum;
* ``pull_card_mid_read()``: the next read base info answers ``0x41`` (read failed) and the card is gone;
* ``selftest_fails``: SAM status answers ``0x60``.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass

from drivers.idcard.sam_protocol import (
    FIND_CARD,
    READ_BASE_INFO,
    RESET_SAM,
    SAM_STATUS,
    SELECT_CARD,
    SW_CHECKSUM,
    SW_COMMAND,
    SW_FIND_FAILED,
    SW_FOUND,
    SW_OK,
    SW_READ_FAILED,
    SW_SAM_SELFTEST,
    SW_SELECT_FAILED,
    Frame,
    FrameParser,
    encode_base_info,
    reply,
)

log = logging.getLogger("sim.idcard")

BITS_PER_BYTE = 10
CHUNK = 64


@dataclass(frozen=True, slots=True)
class EmulatedCard:
    """A made-up card for the emulator: every field as the card stores it (dates YYYYMMDD, ``长期`` = long term)."""

    id_number: str
    valid_from: str = "20200101"
    valid_to: str = "20400101"
    name: str = "测试人"
    sex: str = "1"
    nation: str = "01"
    birth: str = "19800101"
    address: str = "测试省测试市测试路1号"
    authority: str = "测试市公安局"

    def base_info(self) -> bytes:
        """Return the base-info reply data of this card (text and a blank photo)."""
        return encode_base_info(
            name=self.name,
            sex=self.sex,
            nation=self.nation,
            birth=self.birth,
            address=self.address,
            id_number=self.id_number,
            authority=self.authority,
            valid_from=self.valid_from,
            valid_to=self.valid_to,
            photo=b"WLT" + bytes(range(256)) * 3,
        )

    def __repr__(self) -> str:
        return "EmulatedCard(…)"  # never print a card's identity, even a made-up one


class IdCardEmulator:
    """The SAM module as the reader's driver sees it through a pty; see the module docstring."""

    def __init__(self, baud: int = 115200, clock: Callable[[], float] = time.monotonic) -> None:
        self.baud = baud
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._parser = FrameParser()
        self._card: EmulatedCard | None = None
        self._found = False
        self._selected = False
        self._busy_until = 0.0
        self._corrupt = 0
        self._pull_mid_read = False
        self.selftest_fails = False
        self._tx = bytearray()
        self._tx_due = 0.0
        self.commands: list[tuple[int, int]] = []
        self.counters = {"commands": 0, "ignored_busy": 0, "bad_frames": 0, "replies": 0}
        master, slave = os.openpty()
        tty.setraw(master)
        os.set_blocking(master, False)
        self._master: int | None = master
        self._slave: int | None = slave  # kept open so the pty lives between the DUT's opens
        self.port = os.ttyname(slave)

    # -- the card and the faults -----------------------------------------------------------------
    def present_card(self, card: EmulatedCard) -> None:
        """Put ``card`` on the reader."""
        with self._lock:
            self._card = card
            self._found = self._selected = False

    def remove_card(self) -> None:
        """Take the card away (find card answers 0x80)."""
        with self._lock:
            self._card = None
            self._found = self._selected = False

    def sam_busy(self, seconds: float) -> None:
        """Answer nothing for ``seconds``."""
        with self._lock:
            self._busy_until = self._clock() + seconds

    def corrupt_replies(self, n: int = 1) -> None:
        """Send the next ``n`` replies with a wrong checksum."""
        with self._lock:
            self._corrupt += n

    def pull_card_mid_read(self) -> None:
        """Make the next read base info fail (0x41) with the card leaving the field."""
        with self._lock:
            self._pull_mid_read = True

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start answering on the pty."""
        self._thread = threading.Thread(target=self._run, name="idcard-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop and close the pty; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def __enter__(self) -> IdCardEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            master = self._master
            if master is None:
                return
            wait = 0.02
            if self._tx:
                wait = max(0.0, min(wait, self._tx_due - self._clock()))
            readable, _, _ = select.select([master], [], [], wait)
            if readable:
                try:
                    data = os.read(master, 4096)
                except BlockingIOError:
                    data = b""
                except OSError as exc:
                    if exc.errno != errno.EIO:  # EIO: no DUT has the slave open right now
                        raise
                    data = b""
                for item in self._parser.feed(data):
                    if isinstance(item, Frame):
                        self._answer(item)
                    else:
                        self.counters["bad_frames"] += 1
                        if item.reason == "bad_checksum":
                            self._queue(reply(SW_CHECKSUM))
            self._send_due()

    def _send_due(self) -> None:
        while self._tx and self._clock() >= self._tx_due and self._master is not None:
            chunk = bytes(self._tx[:CHUNK])
            try:
                n = os.write(self._master, chunk)
            except (BlockingIOError, OSError):
                n = len(chunk)  # nobody reads: the bytes are gone, as on a UART
            del self._tx[:n]
            self._tx_due += n * BITS_PER_BYTE / self.baud

    def _queue(self, frame: bytes) -> None:
        with self._lock:
            if self._corrupt:
                self._corrupt -= 1
                frame = frame[:-1] + bytes((frame[-1] ^ 0x5A,))
        if not self._tx:
            self._tx_due = self._clock() + CHUNK * BITS_PER_BYTE / self.baud
        self._tx += frame
        self.counters["replies"] += 1

    def _answer(self, frame: Frame) -> None:
        if len(frame.body) < 2:
            self._queue(reply(SW_COMMAND))
            return
        cmd = frame.command
        self.counters["commands"] += 1
        self.commands.append(cmd)
        with self._lock:
            if self._clock() < self._busy_until:
                self.counters["ignored_busy"] += 1
                return
            card = self._card
            out: bytes
            if cmd == RESET_SAM:
                self._found = self._selected = False
                out = reply(SW_OK)
            elif cmd == SAM_STATUS:
                out = reply(SW_SAM_SELFTEST if self.selftest_fails else SW_OK)
            elif cmd == FIND_CARD:
                self._found = card is not None
                self._selected = False
                out = reply(SW_FOUND, bytes(4)) if card is not None else reply(SW_FIND_FAILED)
            elif cmd == SELECT_CARD:
                self._selected = card is not None and self._found
                out = reply(SW_OK, bytes(8)) if self._selected else reply(SW_SELECT_FAILED)
            elif cmd == READ_BASE_INFO:
                if card is None or not self._selected or self._pull_mid_read:
                    if self._pull_mid_read:
                        self._pull_mid_read = False
                        self._card = None
                    self._found = self._selected = False
                    out = reply(SW_READ_FAILED)
                else:
                    out = reply(SW_OK, card.base_info())
            else:
                out = reply(SW_COMMAND)
        self._queue(out)
