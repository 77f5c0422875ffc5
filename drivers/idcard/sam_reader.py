"""The ID card reader over a serial port: SAM transactions, one card read, and the polling source the lane uses.

``SamLink`` runs one command at a time (write, then read until a whole reply frame or the reply
timeout); a garbled reply is asked for once more. ``read_card`` runs find → select → read base info
and turns the reply into ``CardFacts`` at once (``sam_protocol.decode_base_info``): the ID number is
hashed and masked there, and nothing else about the person is decoded.

``IdCardSource`` (the ``IdCardReader`` port) polls for a card every ``poll_s`` on its own thread,
hands each new card out once (the same card left on the reader is not read again until it was
taken away), and reopens the port with back-off after a read error (USB unplug) or when the port
cannot be opened, so the lane keeps working without its reader and picks it up when it comes back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial

from drivers.idcard.sam_protocol import (
    FIND_CARD,
    READ_BASE_INFO,
    RESET_SAM,
    SAM_STATUS,
    SELECT_CARD,
    STATUS_TEXT,
    SW_FIND_FAILED,
    SW_FOUND,
    SW_OK,
    SW_READ_FAILED,
    SW_SELECT_FAILED,
    Frame,
    FrameParser,
    HashFn,
    TraceFn,
    command,
    decode_base_info,
)
from station.codes.idcard import CardFacts
from station.ops.backoff import Backoff

log = logging.getLogger("station.idcard")

READ_TIMEOUT_S = 0.05
BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0


class PortError(OSError):
    """The reader's serial port cannot be opened or used."""


def open_port(path: str, baud: int) -> serial.Serial:
    """Open the reader's port (8N1, raw); raise PortError with the reason."""
    try:
        return serial.Serial(path, baudrate=baud, timeout=READ_TIMEOUT_S, write_timeout=0.5)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise PortError(f"cannot open {path}: {exc}") from exc


def status_name(sw3: int) -> str:
    """Return the name of a SW3 status byte (``sw_0x..`` for one not in the table)."""
    return STATUS_TEXT.get(sw3, f"sw_0x{sw3:02x}")


class SamLink:
    """One open port to a SAM module: one command at a time, each waiting for its reply frame."""

    def __init__(self, ser: serial.Serial, reply_timeout_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ser = ser
        self.reply_timeout_s = reply_timeout_s
        self._clock = clock
        self.parser = FrameParser()
        self.counters = {"commands": 0, "no_answer": 0, "garbled": 0, "retries": 0}

    def transact(self, cmd: tuple[int, int], retries: int = 1) -> Frame | str:
        """Send one command; return its reply frame, or ``no_answer`` / ``garbled`` (asked again ``retries`` times).

        Raises PortError when the port fails (unplugged).
        """
        why = "no_answer"
        for attempt in range(retries + 1):
            if attempt:
                self.counters["retries"] += 1
            got = self._once(cmd)
            if isinstance(got, Frame):
                return got
            why = got
            if got == "no_answer":
                break  # a silent module stays silent for a while: the caller's poll asks again later
        self.counters[why] += 1
        return why

    def _once(self, cmd: tuple[int, int]) -> Frame | str:
        self.counters["commands"] += 1
        self.parser.reset()
        try:
            self.ser.reset_input_buffer()
            self.ser.write(command(cmd))
            deadline = self._clock() + self.reply_timeout_s
            damaged = False
            while self._clock() < deadline:
                data = self.ser.read(self.ser.in_waiting or 1)
                if not data:
                    continue
                for item in self.parser.feed(data):
                    if isinstance(item, Frame) and len(item.body) >= 3:
                        return item
                    damaged = True
        except (serial.SerialException, OSError) as exc:
            raise PortError(str(exc)) from exc
        damaged = damaged or bool(self.parser.flush()) or self.parser.pending() > 0
        return "garbled" if damaged else "no_answer"


@dataclass(frozen=True, slots=True)
class CardRead:
    """The outcome of one find → select → read: ``read`` with the card's facts, or what stopped it."""

    outcome: str  # read | no_card | select_failed | read_failed | bad_data:<why> | no_answer | garbled | sam_error:<status>
    facts: CardFacts | None = None
    ms: float = 0.0


def read_card(link: SamLink, hasher: HashFn, hash_key: str, tracer: TraceFn | None = None) -> CardRead:
    """Run find, select and read base info once; raise PortError when the port fails."""
    t0 = time.monotonic()

    def done(outcome: str, facts: CardFacts | None = None) -> CardRead:
        return CardRead(outcome, facts, round((time.monotonic() - t0) * 1000.0, 1))

    found = link.transact(FIND_CARD)
    if isinstance(found, str):
        return done(found)
    if found.status == SW_FIND_FAILED:
        return done("no_card")
    if found.status != SW_FOUND:
        return done(f"sam_error:{status_name(found.status)}")
    selected = link.transact(SELECT_CARD)
    if isinstance(selected, str):
        return done(selected)
    if selected.status == SW_SELECT_FAILED:
        return done("select_failed")
    if selected.status != SW_OK:
        return done(f"sam_error:{status_name(selected.status)}")
    info = link.transact(READ_BASE_INFO)
    if isinstance(info, str):
        return done(info)
    if info.status == SW_READ_FAILED:
        return done("read_failed")  # the card left the field mid-read, most often
    if info.status != SW_OK:
        return done(f"sam_error:{status_name(info.status)}")
    facts = decode_base_info(info.reply_data, hasher, hash_key, tracer)
    if isinstance(facts, str):
        return done(f"bad_data:{facts}")
    return done("read", facts)


def sam_check(link: SamLink) -> tuple[bool, str]:
    """Reset the SAM and ask its status; return (ok, what happened) for ``stationctl test idcard``."""
    reset = link.transact(RESET_SAM)
    if isinstance(reset, str):
        return False, f"reset SAM: {reset}"
    if reset.status != SW_OK:
        return False, f"reset SAM: {status_name(reset.status)}"
    status = link.transact(SAM_STATUS)
    if isinstance(status, str):
        return False, f"SAM status: {status}"
    if status.status != SW_OK:
        return False, f"SAM status: {status_name(status.status)}"
    return True, "SAM reset and self-test ok"


class IdCardSource:
    """The ``IdCardReader`` port on a serial SAM module: polls for cards, reconnects, hands out each new card once."""

    name = "sam"

    def __init__(
        self,
        port: str,
        hasher: HashFn,
        hash_key: str,
        *,
        baud: int = 115200,
        poll_s: float = 0.3,
        reply_timeout_s: float = 1.0,
        port_resolver: Callable[[], str] | None = None,
        tracer: TraceFn | None = None,
    ) -> None:
        self.port = port
        self._hasher = hasher
        self._tracer = tracer  # the district key's reference (station.codes.trace_key), when one is set
        self._hash_key = hash_key
        self._baud = baud
        self._poll_s = poll_s
        self._reply_timeout_s = reply_timeout_s
        self._resolver = port_resolver
        self._cards: queue.Queue[CardFacts] = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = Backoff(BACKOFF_FIRST_S, BACKOFF_MAX_S)
        self._link: SamLink | None = None
        self._last_hash: str | None = None  # the card still on the reader: not handed out again
        self._lock = threading.Lock()
        self.state = "stopped"
        self.counters: dict[str, int] = {"cards": 0, "open_failures": 0, "port_errors": 0, "reconnects": 0}

    def start(self) -> None:
        """Start polling on a thread; a reader that is absent now is looked for in the background."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._stop.clear()
        self.state = "opening"
        self._thread = threading.Thread(target=self._run, name="idcard-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and close the port."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self._close()
        self.state = "stopped"

    def read(self, timeout: float) -> CardFacts | None:
        """Return the next card read, or None after ``timeout`` seconds."""
        try:
            return self._cards.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def connected(self) -> bool:
        """Return True while the port is open and the module answers."""
        return self.state == "connected"

    def stats(self) -> dict[str, int | float | str]:
        """Return the state, the port, the card and error counters, and the link's and parser's counters."""
        with self._lock:
            out: dict[str, int | float | str] = {"state": self.state, "port": self.port, **self.counters}
            link = self._link
        if link is not None:
            out.update({f"link_{k}": v for k, v in link.counters.items()})
            out.update({f"parser_{k}": v for k, v in link.parser.counter_dict().items()})
        return out

    def _count(self, key: str) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + 1

    def _close(self) -> None:
        with self._lock:
            link, self._link = self._link, None
        if link is not None:
            try:
                link.ser.close()
            except (serial.SerialException, OSError) as exc:
                log.warning("ID card reader close failed port=%s error=%s", self.port, exc)

    def _open(self) -> bool:
        path = self._resolver() if self._resolver is not None else self.port
        self.port = path
        try:
            ser = open_port(path, self._baud)
        except PortError as exc:
            self._count("open_failures")
            if self.counters["open_failures"] == 1:  # once per outage, not every back-off step
                log.error("ID card reader not reachable, looking for it in the background: %s", exc, extra={"idcard": {"port": path}})
            self.state = "reconnecting"
            return False
        with self._lock:
            self._link = SamLink(ser, self._reply_timeout_s)
        self.state = "connected"
        log.info("ID card reader open port=%s", path, extra={"idcard": {"event": "link_up", "port": path}})
        return True

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            log.exception("ID card reader thread crashed port=%s", self.port)
            self.state = "failed"
            raise

    def _loop(self) -> None:
        while not self._stop.is_set():
            link = self._link
            if link is None:
                if not self._open():
                    self._stop.wait(self._backoff.next())
                    continue
                if self.counters["open_failures"] or self.counters["port_errors"]:
                    self._count("reconnects")
                link = self._link
                assert link is not None
            try:
                got = read_card(link, self._hasher, self._hash_key, self._tracer)
            except PortError as exc:
                self._count("port_errors")
                log.warning("ID card reader link lost port=%s error=%s", self.port, exc, extra={"idcard": {"event": "link_lost"}})
                self._close()
                self.state = "reconnecting"
                continue
            self._backoff.reset()
            self._take(got)
            self._stop.wait(self._poll_s)

    def _take(self, got: CardRead) -> None:
        self._count(got.outcome.split(":", 1)[0])
        self.state = "connected" if got.outcome != "no_answer" else "no_answer"
        if got.outcome == "no_card":
            self._last_hash = None  # the card was taken away: the same card shown again is a new read
            return
        if got.facts is None:
            if got.outcome not in ("no_answer",):
                log.info("ID card not read outcome=%s", got.outcome, extra={"idcard": {"outcome": got.outcome}})
            return
        if got.facts.id_hash == self._last_hash:
            return  # still on the reader
        self._last_hash = got.facts.id_hash
        self._count("cards")
        try:
            self._cards.put_nowait(got.facts)
        except queue.Full:
            self._count("cards_dropped")
