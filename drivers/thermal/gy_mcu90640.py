"""The GY-MCU90640 (MLX90640 behind an STM32, UART) as a ``ThermalSource``: probe, configure, read.

The byte protocol is ``drivers.thermal.gy_protocol``; the reader thread, reconnect and stats are
``drivers.thermal.serial_source.SerialThermalSource``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import serial

from drivers.thermal.gy_protocol import (
    BAUD_ARGS,
    COMMAND_GAP_S,
    GY_MCU90640,
    PROBE_ORDER,
    REFRESH_ARGS,
    FrameParser,
    ParsedReply,
    cmd_continuous_mode,
    cmd_query_emissivity,
    cmd_query_mode,
    cmd_request_frame,
    cmd_set_emissivity,
    cmd_set_refresh,
    emissivity_arg,
    frame_time_s,
    max_frame_rate,
)
from drivers.thermal.serial_source import READ_TIMEOUT_S, WRITE_TIMEOUT_S, SerialThermalSource

log = logging.getLogger("station.thermal")

RATE_FRAMES = 8  # frames (7 intervals) used to measure the real output rate after (re)configuring
RATE_TOLERANCE = 0.20


class GyMcu90640Source(SerialThermalSource):
    """``ThermalSource`` for a GY-MCU90640 on a serial port.

    Opening the link finds the module's baud rate if ``baud`` is None, then sends refresh rate,
    emissivity and output mode; on every reconnect the settings are sent again, since a power-cycled
    module forgets unsaved ones. ``port_resolver`` is for devices whose path really changes, such as
    a re-created pty; reconnect, stall and start-up behaviour are the base class's.

    With ``continuous=False`` the module is put in query mode and the reader thread requests one
    frame per refresh period, so the host sets the pace.

    Beyond the base's ``stats()``: ``baud``, ``refresh_hz``, ``observed_hz`` (0.0 until the first
    ``RATE_FRAMES`` frames after (re)configuring have been timed), ``rate_ok`` and
    ``module_emissivity`` (0.0 until ``query_emissivity`` got an answer). The state is ``probing``
    while the speed is being searched.
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
        super().__init__(
            port,
            GY_MCU90640,
            name=name,
            refresh_hz=refresh_hz,
            stall_factor=stall_factor,
            clock=clock,
            port_resolver=port_resolver,
            require_link_at_start=require_link_at_start,
        )
        self._fixed_baud = baud
        self._baud: int | None = baud
        self._emissivity = emissivity
        self._continuous = continuous
        self._probe_window_s = probe_window_s
        self._command_gap_s = command_gap_s

        self._next_request_t = 0.0  # query mode: when to ask for the next frame
        self._observed_hz = 0.0
        self._rate_ok = False
        self._rate_from_t = 0.0
        self._rate_samples: list[float] = []
        self._emissivity_seen = 0
        self._module_emissivity = 0.0

    # -- extra operations -----------------------------------------------------------------------
    def query_emissivity(self, timeout: float = 1.0) -> float | None:
        """Ask the module for its emissivity; return None if no reply arrived within ``timeout``."""
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

    # -- SerialThermalSource -----------------------------------------------------------------------
    def _open_link(self, path: str) -> serial.Serial | None:
        """Open, find the speed and configure; return the port, or None if no speed gave a frame."""
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
                return None
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
            self._next_request_t = self._clock()
        return ser

    def _on_link_up(self, path: str) -> None:
        baud = self._baud or 0
        log.info(
            "thermal link up port=%s baud=%d refresh_hz=%s emissivity=%.2f",
            path,
            baud,
            self._refresh_hz,
            self._emissivity,
            extra={"thermal": {"event": "link_up", "port": path, "baud": baud}},
        )
        if baud and self._refresh_hz > max_frame_rate(baud):
            log.warning(
                "thermal refresh exceeds link capacity refresh_hz=%s baud=%d max_hz=%.2f",
                self._refresh_hz,
                baud,
                max_frame_rate(baud),
                extra={"thermal": {"event": "rate_capped", "baud": baud}},
            )

    def _poll(self, ser: serial.Serial, now: float) -> None:
        if not self._continuous and now >= self._next_request_t:
            self._next_request_t = max(self._next_request_t + 1.0 / self._refresh_hz, now)
            self._send(cmd_request_frame())

    def _on_reply(self, reply: ParsedReply) -> None:
        with self._cond:
            self._module_emissivity = reply.value
            self._emissivity_seen += 1
            self._cond.notify_all()

    def _on_frame(self, now: float) -> None:
        self._note_rate(now)

    def _stall_timeout(self) -> float:
        period = 1.0 / self._refresh_hz
        if self._baud:
            period = max(period, frame_time_s(self._baud))
        return max(1.0, self._stall_factor * period)

    def _opening_state(self) -> str:
        return "probing" if self._fixed_baud is None else "reconnecting"

    def _no_frame_reason(self) -> str:
        return f"no GY-MCU90640 frame on {self._port} at any of {self._probe_list()} baud"

    def _extra_stats(self) -> dict[str, int | float | str]:
        return {
            "baud": self._baud or 0,
            "refresh_hz": self._refresh_hz,
            "observed_hz": round(self._observed_hz, 3),
            "rate_ok": self._rate_ok,
            "module_emissivity": self._module_emissivity,
        }

    # -- probing and configuring -----------------------------------------------------------------
    def _probe_list(self) -> list[int]:
        if self._fixed_baud is not None:
            return [self._fixed_baud]
        first = [self._baud] if self._baud else []
        return first + [b for b in PROBE_ORDER if b not in first]

    def _probe_window(self, baud: int) -> float:
        """Return a window long enough for the module to react, finish a frame in flight and send a requested one."""
        if self._probe_window_s is not None:
            return self._probe_window_s
        return self._command_gap_s + 2 * frame_time_s(baud) + 1.0 / self._refresh_hz + 0.2

    def _probe(self, ser: serial.Serial) -> int | None:
        """Return the first baud rate at which a checksum-valid frame arrives within the probe window.

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
