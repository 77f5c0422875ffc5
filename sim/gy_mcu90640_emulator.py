"""Emulate a GY-MCU90640 byte for byte on a pseudo-terminal, for the demo, tests and bench (thermal.md §5.2).

The emulator owns a pty. The device under test opens ``emulator.port`` (the slave side) like any
serial port; the emulator writes frames into the master side and reads the DUT's commands from it.

Things a pty does not do on its own, and the emulator therefore does:

* **Pacing.** A pty moves bytes instantly; a UART needs 10 bits per byte. Output goes out in small
  chunks, each released when its last byte would have finished on the wire at the emulated baud,
  so a frame takes 15440/baud seconds and frames never come faster than the link allows.
* **Baud mismatch.** On Linux the master shares the slave's termios, so ``tcgetattr(master)`` shows
  the speed the DUT configured. While it differs from the module's baud the DUT receives random
  line noise instead of frames, and the module ignores what the DUT sends (it would arrive garbled).
* **Overrun.** Output the DUT does not read in time is dropped (non-blocking writes), as on a UART
  where the module transmits whether or not anyone listens.

``unplug()`` closes the pty (the DUT's reads fail as with a pulled USB adapter); ``replug()`` makes a
NEW pty, so ``.port`` changes — hand the driver a ``port_resolver`` that returns ``emulator.port``.
On real hardware the /dev/serial/by-id path stays the same across replugs. ``replug()`` also
simulates a power cycle: settings return to the flash file's (if any) or the factory values.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import select
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from drivers.thermal.gy_protocol import (
    BAUD_ARGS,
    BITS_PER_BYTE,
    CMD_BAUD,
    CMD_MODE,
    CMD_PREFIX,
    CMD_QUERY_EMISSIVITY,
    CMD_REFRESH,
    CMD_SAVE,
    CMD_SET_EMISSIVITY,
    FRAME_LEN,
    MODE_CONTINUOUS,
    MODE_QUERY,
    N_PIXELS,
    REFRESH_ARGS,
    emissivity_arg,
    emissivity_reply,
    encode_frame,
    image_to_module_order,
    parse_command,
)

log = logging.getLogger("station.thermal.emulator")

RenderFn = Callable[[float], tuple[np.ndarray, float]]

_TERMIOS_SPEED = {9600: termios.B9600, 115200: termios.B115200, 460800: termios.B460800}
_BAUD_FOR_ARG = {arg: baud for baud, arg in BAUD_ARGS.items()}
_REFRESH_FOR_ARG = {arg: hz for hz, arg in REFRESH_ARGS.items()}
IMPLAUSIBLE_KINDS = ("zeros", "hot", "dead")
DEFAULT_FAULT_OFFSET = 800  # inside the pixel block, away from header and checksum


@dataclass(slots=True)
class ModuleSettings:
    """The module's settings a command can change (and ``save`` writes to flash)."""

    baud: int
    refresh_hz: float
    mode: str  # "continuous" | "query"
    emissivity: float


@dataclass(slots=True)
class _Fault:
    kind: str  # drop_byte | insert_byte | flip_bit | truncate | implausible
    offset: int | None = None
    value: int = 0
    bit: int = 0
    keep: int | None = None
    implausible: str = ""


class GyMcu90640Emulator:
    """The module as the DUT sees it through a pty; see the module docstring for what it models."""

    def __init__(
        self,
        render: RenderFn,
        baud: int = 115200,
        refresh_hz: float = 4.0,
        emissivity: float = 0.95,
        flash_path: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        reaction_s: float = 0.1,
        chunk_bytes: int = 64,
        seed: int | None = None,
        history: int = 64,
        subpage_refresh: bool = False,
        truth: Callable[[float], dict[str, Any]] | None = None,
        sidecar_path: str | None = None,
    ) -> None:
        """Open the pty and boot with the flash file's settings (if any) or these factory ones.

        ``truth(now)`` (e.g. ``ThermalSceneRenderer.ground_truth``) is written as one JSON line per
        frame built to ``sidecar_path``: {"seq", "t", "fault", …truth}, the ground truth tests check against.
        """
        if baud not in BAUD_ARGS:
            raise ValueError(f"baud must be one of {sorted(BAUD_ARGS)}")
        if float(refresh_hz) not in REFRESH_ARGS:
            raise ValueError(f"refresh_hz must be one of {sorted(REFRESH_ARGS)}")
        emissivity_arg(emissivity)
        self._render = render
        self._truth = truth
        self._sidecar = open(sidecar_path, "a", encoding="utf-8") if sidecar_path else None
        self._factory = ModuleSettings(baud, float(refresh_hz), "continuous", emissivity)
        self._flash_path = flash_path
        self._clock = clock
        self._reaction_s = reaction_s
        self._chunk = chunk_bytes
        self._rng = random.Random(seed)  # line noise and garbage only; frames come from ``render``
        # thermal.md §5.3 leaves open whether the firmware's "8 Hz" means 8 whole images or 8
        # MLX90640 sub-pages per second; True models the latter (whole images at half the rate)
        self._images_per_tick = 0.5 if subpage_refresh else 1.0

        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self.port = ""

        self._settings = self._boot_settings()
        self._pending_cmds: deque[tuple[float, int, int]] = deque()
        self._faults: deque[_Fault] = deque()
        self._out_queue: deque[tuple[str, bytes]] = deque()  # replies and garbage waiting for the wire
        self._rx = bytearray()
        self._tx = b""
        self._tx_sent = 0
        self._tx_start = 0.0
        self._tx_kind = ""
        self._next_frame_t = 0.0
        self._frame_requests = 0
        self._stall_until = 0.0
        self._frame_seq = 0
        # (seq, bytes as built, fault applied or "") — what tests compare the driver's output with
        self.sent_frames: deque[tuple[int, bytes, str]] = deque(maxlen=history)
        self._c: dict[str, int] = dict.fromkeys(
            (
                "frames_sent",
                "noise_frames",
                "bytes_sent",
                "bytes_overrun",
                "commands_ok",
                "commands_invalid",
                "rx_garbled_bytes",
                "rx_junk_bytes",
                "emissivity_replies_sent",
                "frame_requests",
                "saves",
                "drop_byte",
                "insert_byte",
                "flip_bit",
                "truncated_frames",
                "garbage_bursts",
                "garbage_bytes",
                "implausible_frames",
                "stalls",
                "unplugs",
                "replugs",
            ),
            0,
        )
        self._open_pty()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start sending frames (in continuous mode) and answering commands; a second call does nothing."""
        if self._thread is not None:
            return
        self._stop.clear()
        with self._lock:
            self._next_frame_t = self._clock()
        self._thread = threading.Thread(target=self._run, name="gy-mcu90640-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and close the pty; safe to call more than once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        with self._lock:
            self._close_pty()
            if self._sidecar is not None:
                self._sidecar.close()
                self._sidecar = None

    def __enter__(self) -> GyMcu90640Emulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------------------------
    @property
    def settings(self) -> ModuleSettings:
        """Return a copy of the module's current settings."""
        with self._lock:
            return ModuleSettings(**asdict(self._settings))

    def stats(self) -> dict[str, int | float | str]:
        """Return the counters (frames, bytes, commands, faults), the settings, the port and the DUT's baud."""
        with self._lock:
            out: dict[str, int | float | str] = dict(self._c)
            out.update(asdict(self._settings))
            out["port"] = self.port
            out["dut_baud"] = self._dut_baud() or 0
            return out

    # -- fault injection (thread-safe; frame faults hit the next frame that starts) ----------------
    def drop_byte(self, offset: int | None = None) -> None:
        """Leave out the byte at ``offset`` (default: inside the pixel block) of the next frame."""
        self._add_fault(_Fault("drop_byte", offset=offset))

    def insert_byte(self, offset: int | None = None, value: int | None = None) -> None:
        """Insert ``value`` (default: a random byte) at ``offset`` of the next frame."""
        with self._lock:
            v = self._rng.randrange(256) if value is None else value
            self._faults.append(_Fault("insert_byte", offset=offset, value=v))

    def flip_bit(self, offset: int | None = None, bit: int = 0) -> None:
        """Flip ``bit`` of the byte at ``offset`` of the next frame."""
        self._add_fault(_Fault("flip_bit", offset=offset, bit=bit))

    def truncate_next_frame(self, keep: int | None = None) -> None:
        """Send only the first ``keep`` bytes of the next frame (default: half)."""
        self._add_fault(_Fault("truncate", keep=keep))

    def implausible_frame(self, kind: str) -> None:
        """Next frame is checksum-valid but impossible: all zeros, 320 °C, or -327.68 °C dead pixels."""
        if kind not in IMPLAUSIBLE_KINDS:
            raise ValueError(f"kind must be one of {IMPLAUSIBLE_KINDS}")
        self._add_fault(_Fault("implausible", implausible=kind))

    def garbage_burst(self, n: int, data: bytes | None = None) -> None:
        """Send ``n`` random bytes (or ``data``) before the next frame."""
        with self._lock:
            payload = data if data is not None else self._rng.randbytes(n)
            self._out_queue.append(("garbage", payload))
            self._c["garbage_bursts"] += 1

    def stall(self, seconds: float) -> None:
        """Go silent for ``seconds``, abandoning a frame in progress (a hung module)."""
        with self._lock:
            self._stall_until = self._clock() + seconds
            self._tx = b""
            self._c["stalls"] += 1

    def unplug(self) -> None:
        """Close the pty: the DUT's next read fails as after a USB unplug."""
        with self._lock:
            self._close_pty()
            self._c["unplugs"] += 1

    def replug(self) -> str:
        """Open a new pty (NEW path, see ``.port``) with a power-cycled module; return the new path."""
        with self._lock:
            self._close_pty()
            self._open_pty()
            self._settings = self._boot_settings()
            self._pending_cmds.clear()
            self._faults.clear()
            self._out_queue.clear()
            self._frame_requests = 0
            self._next_frame_t = self._clock()
            self._c["replugs"] += 1
            return self.port

    # -- internals ---------------------------------------------------------------------------------
    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _boot_settings(self) -> ModuleSettings:
        s = ModuleSettings(**asdict(self._factory))
        if self._flash_path and os.path.exists(self._flash_path):
            with open(self._flash_path, encoding="utf-8") as fh:
                saved = json.load(fh)
            s = ModuleSettings(
                baud=int(saved["baud"]),
                refresh_hz=float(saved["refresh_hz"]),
                mode=str(saved["mode"]),
                emissivity=float(saved["emissivity"]),
            )
        return s

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(master)  # the master shares the slave's termios: no echo, no CR/LF mangling
        os.set_blocking(master, False)
        self._master, self._slave = master, slave  # keeping the slave open keeps the pty alive between DUT opens
        self.port = os.ttyname(slave)
        self._rx.clear()
        self._tx = b""

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        self._tx = b""

    def _dut_baud(self) -> int | None:
        if self._master is None:
            return None
        attrs = termios.tcgetattr(self._master)
        for baud, speed in _TERMIOS_SPEED.items():
            if attrs[5] == speed:  # ospeed; pyserial sets ispeed and ospeed together
                return baud
        return None

    def _speed_matches(self) -> bool:
        return self._dut_baud() == self._settings.baud

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:
            log.exception("emulator thread crashed port=%s", self.port)  # e.g. a render() bug
            raise

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                now = self._clock()
                self._apply_due(now)
                if self._master is None:
                    wake = now + 0.01
                else:
                    if not self._tx:
                        self._next_output(now)
                    self._send_due(now)
                    wake = self._next_wake(now)
                master = self._master
            timeout = max(0.0, min(wake - self._clock(), 0.05))
            if master is None:
                self._stop.wait(timeout)
                continue
            try:
                ready, _, _ = select.select([master], [], [], timeout)
            except (OSError, ValueError) as exc:  # fd closed by unplug() between lock and select
                log.debug("emulator select aborted: %s", exc)
                continue
            if ready:
                self._receive()

    def _next_wake(self, now: float) -> float:
        times = [now + 0.05]
        if self._tx:
            times.append(self._chunk_due())
        elif self._stall_until > now:
            times.append(self._stall_until)
        elif self._settings.mode == "continuous":
            times.append(self._next_frame_t)
        if self._pending_cmds:
            times.append(self._pending_cmds[0][0])
        return min(times)

    def _chunk_due(self) -> float:
        end = min(len(self._tx), self._tx_sent + self._chunk)
        return self._tx_start + end * BITS_PER_BYTE / self._settings.baud

    def _next_output(self, now: float) -> None:
        if self._stall_until > now:
            return
        if self._out_queue:
            kind, payload = self._out_queue.popleft()
            self._begin(kind, payload, now)
            return
        s = self._settings
        if s.mode == "continuous":
            if now < self._next_frame_t:
                return
            period = 1.0 / (s.refresh_hz * self._images_per_tick)
            # keep the schedule, but after a long gap restart it rather than bursting to catch up
            self._next_frame_t = max(self._next_frame_t + period, now)
        elif self._frame_requests > 0:
            self._frame_requests -= 1
        else:
            return
        self._begin("frame", self._build_frame(now), now)

    def _begin(self, kind: str, payload: bytes, now: float) -> None:
        self._tx, self._tx_sent, self._tx_start, self._tx_kind = payload, 0, now, kind
        if kind == "garbage":
            self._c["garbage_bytes"] += len(payload)
        elif kind == "reply":
            self._c["emissivity_replies_sent"] += 1

    def _build_frame(self, now: float) -> bytes:
        img, die_c = self._render(now)
        words = image_to_module_order(img)
        ta = int(round(die_c * 100))
        fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.kind == "implausible":
            words, ta = self._implausible_words(fault.implausible, ta)
            self._c["implausible_frames"] += 1
        data = encode_frame(words, ta)
        self._frame_seq += 1
        if fault is not None and fault.kind != "implausible":
            data = self._damage(data, fault)
        self.sent_frames.append((self._frame_seq, data, fault.kind if fault else ""))
        if self._sidecar is not None:
            row: dict[str, Any] = {"seq": self._frame_seq, "t": round(now, 6), "fault": fault.kind if fault else ""}
            if self._truth is not None:
                row.update(self._truth(now))
            self._sidecar.write(json.dumps(row, default=_jsonable) + "\n")
            self._sidecar.flush()
        return data

    @staticmethod
    def _implausible_words(kind: str, ta: int) -> tuple[np.ndarray, int]:
        if kind == "zeros":
            return np.zeros(N_PIXELS, dtype=np.int16), ta
        if kind == "hot":
            return np.full(N_PIXELS, 32000, dtype=np.int16), ta  # 320.00 °C everywhere
        words = np.full(N_PIXELS, 2500, dtype=np.int16)
        words[::97] = -0x8000  # dead pixels as some firmware reports them
        return words, ta

    def _damage(self, data: bytes, fault: _Fault) -> bytes:
        off = DEFAULT_FAULT_OFFSET if fault.offset is None else fault.offset
        if not 0 <= off < len(data):
            raise ValueError(f"fault offset {off} outside the frame")
        if fault.kind == "drop_byte":
            self._c["drop_byte"] += 1
            return data[:off] + data[off + 1 :]
        if fault.kind == "insert_byte":
            self._c["insert_byte"] += 1
            return data[:off] + bytes((fault.value,)) + data[off:]
        if fault.kind == "flip_bit":
            self._c["flip_bit"] += 1
            return data[:off] + bytes((data[off] ^ (1 << fault.bit),)) + data[off + 1 :]
        if fault.kind == "truncate":
            self._c["truncated_frames"] += 1
            keep = FRAME_LEN // 2 if fault.keep is None else fault.keep
            return data[:keep]
        raise ValueError(f"unknown fault {fault.kind}")

    def _send_due(self, now: float) -> None:
        """Release every chunk whose last byte has finished on the emulated wire."""
        while self._tx and now >= self._chunk_due():
            end = min(len(self._tx), self._tx_sent + self._chunk)
            chunk = self._tx[self._tx_sent : end]
            if not self._speed_matches():
                chunk = self._rng.randbytes(len(chunk))  # the DUT samples at the wrong rate
                if self._tx_sent == 0 and self._tx_kind == "frame":
                    self._c["noise_frames"] += 1
            elif end == len(self._tx) and self._tx_kind == "frame":
                self._c["frames_sent"] += 1
            self._write(chunk)
            self._tx_sent = end
            if end >= len(self._tx):
                self._tx = b""

    def _write(self, chunk: bytes) -> None:
        if self._master is None:
            return
        try:
            n = os.write(self._master, chunk)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            n = 0
        self._c["bytes_sent"] += n
        self._c["bytes_overrun"] += len(chunk) - n

    def _receive(self) -> None:
        with self._lock:
            if self._master is None:
                return
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                return  # no slave open at the moment
            if not self._speed_matches():
                self._c["rx_garbled_bytes"] += len(data)
                return
            self._rx += data
            self._parse_commands(self._clock())

    def _parse_commands(self, now: float) -> None:
        rx = self._rx
        while True:
            i = rx.find(bytes((CMD_PREFIX,)))
            if i < 0:
                self._c["rx_junk_bytes"] += len(rx)
                rx.clear()
                return
            if i:
                self._c["rx_junk_bytes"] += i
                del rx[:i]
            if len(rx) < 4:
                return
            parsed = parse_command(bytes(rx[:4]))
            if parsed is None or not self._valid(*parsed):
                self._c["commands_invalid"] += 1
                del rx[:1]
                continue
            del rx[:4]
            self._c["commands_ok"] += 1
            self._pending_cmds.append((now + self._reaction_s, *parsed))

    @staticmethod
    def _valid(cmd: int, arg: int) -> bool:
        if cmd == CMD_BAUD:
            return arg in _BAUD_FOR_ARG
        if cmd == CMD_REFRESH:
            return arg in _REFRESH_FOR_ARG
        if cmd == CMD_MODE:
            return arg in (MODE_QUERY, MODE_CONTINUOUS)
        if cmd == CMD_SET_EMISSIVITY:
            return 1 <= arg <= 100
        if cmd in (CMD_QUERY_EMISSIVITY, CMD_SAVE):
            return arg == 0x01
        return False

    def _apply_due(self, now: float) -> None:
        while self._pending_cmds and self._pending_cmds[0][0] <= now:
            _, cmd, arg = self._pending_cmds.popleft()
            self._apply(cmd, arg, now)

    def _apply(self, cmd: int, arg: int, now: float) -> None:
        s = self._settings
        if cmd == CMD_BAUD:
            s.baud = _BAUD_FOR_ARG[arg]
        elif cmd == CMD_REFRESH:
            s.refresh_hz = _REFRESH_FOR_ARG[arg]
        elif cmd == CMD_MODE and arg == MODE_QUERY:
            s.mode = "query"
            self._frame_requests += 1
            self._c["frame_requests"] += 1
        elif cmd == CMD_MODE:
            if s.mode != "continuous":
                s.mode = "continuous"
                self._next_frame_t = now
        elif cmd == CMD_SET_EMISSIVITY:
            s.emissivity = arg / 100.0
        elif cmd == CMD_QUERY_EMISSIVITY:
            self._out_queue.append(("reply", emissivity_reply(emissivity_arg(s.emissivity))))
        elif cmd == CMD_SAVE:
            self._c["saves"] += 1
            if self._flash_path:
                tmp = self._flash_path + ".tmp"
                with open(tmp, "w", encoding="utf-8") as fh:
                    json.dump(asdict(s), fh)
                os.replace(tmp, self._flash_path)
        log.debug("emulator applied cmd=0x%02X arg=0x%02X", cmd, arg)


def _jsonable(obj: object) -> object:
    """Sidecar values that JSON does not know: boxes as lists, numpy scalars as numbers."""
    if hasattr(obj, "as_list"):
        return obj.as_list()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)
