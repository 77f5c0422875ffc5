"""The Heimann HTPA32×32 serial module as a ``ThermalSource``: one query per period, the answer parsed.

The frame layout and encoder are ``drivers.thermal.htpa_protocol``; the reader thread, reconnect and
stats are ``drivers.thermal.serial_source.SerialThermalSource``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import serial

from drivers.thermal.gy_protocol import FrameParser
from drivers.thermal.htpa_protocol import BAUD, HTPA32X32, QUERY
from drivers.thermal.serial_source import READ_TIMEOUT_S, WRITE_TIMEOUT_S, SerialThermalSource

log = logging.getLogger("station.thermal.htpa32x32")

ANSWER_WINDOW_S = 0.4  # 2055 bytes take 178 ms at 115200 baud; allow twice that
PROBE_WINDOW_S = 1.0  # at start-up and on reconnect: time for the first answer


class HtpaSource(SerialThermalSource):
    """``ThermalSource`` for the HTPA32×32 module: asks for a frame every period, parses the answer.

    Each request starts clean (parser and input buffer cleared), so no half frame can carry over. A
    request with no frame within ``ANSWER_WINDOW_S`` counts in ``timeouts``; no frame for the stall
    timeout (1 s at 4 Hz) closes the port and reopens it, as for the GY module. The link is up only
    once the module has answered a query with a valid frame.
    """

    def __init__(
        self,
        port: str,
        refresh_hz: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "htpa32x32",
        *,
        stall_factor: float = 3.0,
        port_resolver: Callable[[], str] | None = None,
        require_link_at_start: bool = True,
    ) -> None:
        super().__init__(
            port,
            HTPA32X32,
            name=name,
            refresh_hz=refresh_hz,
            stall_factor=stall_factor,
            clock=clock,
            port_resolver=port_resolver,
            require_link_at_start=require_link_at_start,
        )
        self._period = 1.0 / refresh_hz
        self._request_t: float | None = None  # when the unanswered request went out
        self._next_request_t = 0.0
        self._requests = 0
        self._timeouts = 0

    def _open_link(self, path: str) -> serial.Serial | None:
        """Open the port and ask once; return it if a valid frame came back within ``PROBE_WINDOW_S``."""
        ser = serial.Serial(path, BAUD, timeout=READ_TIMEOUT_S, write_timeout=WRITE_TIMEOUT_S, exclusive=True)
        try:
            ser.reset_input_buffer()
            ser.write(QUERY)
            parser = FrameParser(HTPA32X32)
            deadline = self._clock() + PROBE_WINDOW_S
            while self._clock() < deadline and not self._stop.is_set():
                parser.feed(ser.read(ser.in_waiting or 1))
                if parser.frames_ok or parser.implausible_frames:
                    break
            else:
                ser.close()
                return None
        except (serial.SerialException, OSError):
            ser.close()
            raise
        with self._stats_lock:
            self._request_t = None
            self._next_request_t = self._clock()
        return ser

    def _poll(self, ser: serial.Serial, now: float) -> None:
        if self._request_t is not None:
            if now - self._request_t < ANSWER_WINDOW_S:
                return
            with self._stats_lock:
                self._timeouts += 1
            self._request_t = None
        if now < self._next_request_t:
            return
        self._parser.reset()  # a request starts clean: no half frame can carry over
        ser.reset_input_buffer()
        ser.write(QUERY)
        with self._stats_lock:
            self._requests += 1
        self._request_t = now
        self._next_request_t = max(self._next_request_t + self._period, now)

    def _on_frame(self, now: float) -> None:
        self._request_t = None

    def _extra_stats(self) -> dict[str, int | float | str]:
        return {"baud": BAUD, "requests": self._requests, "timeouts": self._timeouts}
