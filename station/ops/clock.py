"""The station's clocks: monotonic for latencies and deadlines, wall for records, and when the wall is right.

A Pi has no real-time clock: it boots at 1970 or at fake-hwclock's last save, and NTP steps the clock
later, forward or back by hours. Everything that times something on the box (decisions, stage
timeouts, gate command deadlines, the watchdog, back-offs) reads :meth:`Clock.monotonic`, which never
steps; the wall clock only stamps records (``ts``) and judges a code's dates.

:class:`SystemClock` is the host's clock. It counts as synchronised once systemd-timesyncd's flag
file exists or the kernel's NTP status (``adjtimex``, what ``timedatectl`` shows as "System clock
synchronized") says so, and never while the wall clock reads earlier than :data:`WALL_FLOOR` (a
clock at 1970 is not right whatever a daemon said).

:class:`ClockWatch` wraps any clock and watches it: a change of ``wall - monotonic`` larger than
``step_threshold_s`` is a step (NTP slews far more slowly than that). While the clock is not
synchronised it keeps the segments of constant offset and where each began in the event store
(rowids and ``seq``); once the clock becomes synchronised the offset is known, and it writes one
**clock correction** per segment that stamped records: ``offset_ms`` to add to their ``ts``, the
``seq`` range and their ids, through the outbox (``events/clock``) like any event. The original
rows are never rewritten.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # station.ports imports numpy; stationctl --help must not (tests/test_stationctl_tools.py)
    from station.ports import Clock

log = logging.getLogger("station.ops.clock")

# systemd-timesyncd touches this file once the clock has been synchronised since boot.
TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"

WALL_FLOOR = 1_735_689_600.0
"""2025-01-01T00:00:00Z: a wall clock earlier than this was never set (a Pi without RTC boots at 1970)."""

_TIME_ERROR = 5  # adjtimex(2) return value: the clock is not synchronised (STA_UNSYNC)


def _libc_adjtimex() -> Callable[[], int] | None:
    """Return a call of adjtimex(2) that only reads (modes = 0), or None where libc has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.adjtimex
    except (OSError, AttributeError):
        return None
    # struct timex is about 208 bytes on 64-bit Linux; a zeroed 512-byte buffer leaves modes = 0 (read only).
    buf = ctypes.create_string_buffer(512)

    def call() -> int:
        ctypes.memset(buf, 0, len(buf))
        return int(fn(buf))

    return call


_ADJTIMEX = _libc_adjtimex()


def kernel_clock_synced() -> bool | None:
    """Return the kernel's NTP sync status (adjtimex is not TIME_ERROR), or None when it cannot be asked."""
    if _ADJTIMEX is None:
        return None
    state = _ADJTIMEX()
    if state < 0:
        return None
    return state != _TIME_ERROR


class SystemClock:
    """The host's clocks, as the :class:`station.ports.Clock` the pipeline reads."""

    name = "system"

    def __init__(
        self,
        timesync_flag: str = TIMESYNC_FLAG,
        *,
        kernel_status: Callable[[], bool | None] | None = kernel_clock_synced,
        wall_floor: float = WALL_FLOOR,
    ) -> None:
        self._flag = timesync_flag
        self._kernel_status = kernel_status
        self._wall_floor = wall_floor
        self._synced = False

    def monotonic(self) -> float:
        """Return seconds on a clock that never jumps (for latencies and deadlines)."""
        return time.monotonic()

    def wall(self) -> float:
        """Return the wall-clock time in seconds since the epoch (for records)."""
        return time.time()

    def synced(self) -> bool:
        """Return whether the wall clock has been synchronised (NTP) since boot and reads a plausible date."""
        # Once synced, stays synced for this boot; until then, ask again (a stat and a syscall).
        if not self._synced:
            kernel = self._kernel_status() if self._kernel_status is not None else None
            self._synced = bool(kernel) or os.path.exists(self._flag)
        return self._synced and time.time() >= self._wall_floor


@dataclass(frozen=True, slots=True)
class StorePosition:
    """Where the event store stood at one moment: the newest rowid of each record table, and ``seq``."""

    rowids: tuple[int, ...]  # in the order of station.store.clock_corrections.RECORD_TABLES
    seq: int


class CorrectionStore(Protocol):
    """What :class:`ClockWatch` needs of the event store (``station.store.events.SqliteEventStore``)."""

    def clock_position(self) -> StorePosition:
        """Return the store's position now."""

    def unsynced_records(self, after: StorePosition, upto: StorePosition | None) -> dict[str, list[tuple[str, float]]]:
        """Return (id, ts) of events and vehicles stamped with ``clock_synced`` false in (after, upto]."""

    def record_clock_correction(self, correction: Mapping[str, Any]) -> int:
        """Write one clock correction and its outbox message in one transaction; return the row id."""

    def clock_state(self) -> str | None:
        """Return the saved unsynced stretches (JSON), or None."""

    def save_clock_state(self, text: str | None) -> None:
        """Save (None: forget) the unsynced stretches."""


@dataclass(slots=True)
class _Segment:
    offset_s: float  # wall - monotonic while this segment's records were stamped
    start: StorePosition  # the store's position when it began (its records come after)
    start_mono: float
    end_mono: float | None = None  # when the next segment (or the sync) began

    def as_dict(self) -> dict[str, Any]:
        """Return the segment as it is saved between daemon runs."""
        start = {"rowids": list(self.start.rowids), "seq": self.start.seq}
        return {"offset_s": self.offset_s, "start": start, "start_mono": self.start_mono, "end_mono": self.end_mono}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Segment:
        """Return a saved segment."""
        start = StorePosition(tuple(int(x) for x in d["start"]["rowids"]), int(d["start"]["seq"]))
        end = d.get("end_mono")
        return cls(float(d["offset_s"]), start, float(d["start_mono"]), float(end) if end is not None else None)

    def stamped(self, ts: float, slack_s: float) -> bool:
        """Return whether a record stamped ``ts`` could have been stamped during this segment."""
        end = self.end_mono if self.end_mono is not None else float("inf")
        return self.start_mono - slack_s <= ts - self.offset_s <= end + slack_s


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """Return this boot's id: the monotonic clock (and so a saved stretch) is only comparable within one boot."""
    try:
        return BOOT_ID.read_text(encoding="ascii").strip()
    except OSError:
        return ""


MAX_IDS = 2000
"""Ids listed in one correction (all kinds together); past that the ``seq`` range names the records (``ids_complete`` false)."""


class ClockWatch:
    """The station's clock: an inner clock's readings, watched for steps and for the moment it becomes synchronised.

    Implements :class:`station.ports.Clock`. Every ``wall()`` and ``synced()`` call observes the
    clock, so a step is seen by the first reading that would stamp with the new offset. The thread
    (``start``) observes every ``check_interval_s`` and writes the corrections.
    """

    def __init__(
        self, inner: Clock, *, step_threshold_s: float = 1.0, check_interval_s: float = 1.0, boot: Callable[[], str] = boot_id
    ) -> None:
        self.inner = inner
        self._boot = boot
        self._dirty = False  # the unsynced segments changed since they were last saved
        self.step_threshold_s = step_threshold_s
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._store: CorrectionStore | None = None
        self._offset: float | None = None
        self._synced = False
        self._segments: list[_Segment] = []
        self._synced_at: tuple[float, float, StorePosition] | None = None  # (mono, offset, position) when sync came
        # After the sync: records beyond _late_after are checked for late unsynced ones, against the closed segments.
        self._late_after: StorePosition | None = None
        self._late_offset: float | None = None
        self._closed: list[_Segment] = []
        self.steps: list[dict[str, float | bool]] = []  # each step seen: mono, delta_s, while synced
        self.corrections = 0
        self._unwritten: list[dict[str, Any]] = []  # corrections the store refused (full, read-only): written at a later check
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the Clock port ----------------------------------------------------------------------------
    def monotonic(self) -> float:
        """Return the inner clock's monotonic reading."""
        return self.inner.monotonic()

    def wall(self) -> float:
        """Return the inner clock's wall time, noting a step."""
        wall = self.inner.wall()
        self._observe(self.inner.monotonic(), wall, None)
        return wall

    def synced(self) -> bool:
        """Return whether the inner clock is synchronised, noting the moment it became so."""
        synced = self.inner.synced()
        if synced != self._synced:
            self._observe(self.inner.monotonic(), self.inner.wall(), synced)
        return synced

    # -- watching ------------------------------------------------------------------------------------
    def attach(self, store: CorrectionStore) -> None:
        """Watch on behalf of ``store``: from now on, records it stamps while unsynced are corrected later.

        Stretches an earlier run of this boot saved are taken up again (the monotonic clock is the same
        one): a step while the daemon was down starts a new stretch at the first observation.
        """
        restored = self._restore(store)
        with self._lock:
            self._store = store
            if restored:
                self._segments = restored
                self._offset = restored[-1].offset_s
        self._observe(self.inner.monotonic(), self.inner.wall(), self.inner.synced())

    def _restore(self, store: CorrectionStore) -> list[_Segment]:
        try:
            text = store.clock_state()
            saved = json.loads(text) if text else None
            if not isinstance(saved, dict):
                return []
            segments = [_Segment.from_dict(d) for d in saved["segments"]]
        except Exception as exc:  # noqa: BLE001 - a damaged or unreadable state costs those corrections, never the start
            log.error("saved clock stretches unreadable, not restored error=%s", exc)
            return []
        if saved.get("boot") != self._boot() or not segments:
            log.warning("records stamped unsynced in an earlier boot cannot be corrected (the monotonic clock restarted)")
            self._dirty = True  # forget them
            return []
        log.info("unsynced clock stretches of an earlier run restored segments=%d", len(segments))
        return segments

    def _save(self, store: CorrectionStore) -> None:
        with self._lock:
            if not self._dirty:
                return
            self._dirty = False
            segments = [seg.as_dict() for seg in self._segments]
        text = json.dumps({"boot": self._boot(), "segments": segments}) if segments else None
        try:
            store.save_clock_state(text)
        except Exception as exc:  # noqa: BLE001 - saved again at the next check
            with self._lock:
                self._dirty = True
            log.error("clock stretches not saved error=%s", exc)

    def _observe(self, mono: float, wall: float, synced: bool | None) -> None:
        offset = wall - mono
        with self._lock:
            if self._offset is not None and abs(offset - self._offset) > self.step_threshold_s:
                delta = offset - self._offset
                self.steps.append({"mono": round(mono, 3), "delta_s": round(delta, 3), "synced": self._synced})
                log.warning("wall clock stepped delta_s=%.3f synced=%s wall=%.3f", delta, self._synced, wall)
                if not self._synced and self._store is not None and self._segments:
                    self._segments[-1].end_mono = mono
                    self._segments.append(_Segment(offset, self._position(self._segments[-1].start), mono))
                    self._dirty = True
            self._offset = offset
            if self._store is not None and not self._synced and not synced and not self._segments:
                self._segments.append(_Segment(offset, self._position(StorePosition((), 0)), mono))
                self._dirty = True
            if synced and not self._synced:
                self._synced = True
                last = self._segments[-1].start if self._segments else StorePosition((), 0)
                self._synced_at = (mono, offset, self._position(last))
                if self._segments:
                    self._segments[-1].end_mono = mono
                log.info("wall clock synchronised offset_s=%.3f unsynced_segments=%d", offset, len(self._segments))

    def _position(self, fallback: StorePosition) -> StorePosition:
        """Return where the store stands; on a read error, ``fallback`` (a stamping thread must never see it raise)."""
        if self._store is None:
            return fallback
        try:
            return self._store.clock_position()
        except Exception as exc:  # noqa: BLE001 - called from wall(): a store fault must not reach the lane's executor
            log.error("store position unreadable, clock stretch boundary approximate error=%s", exc)
            return fallback

    def check(self) -> int:
        """Observe the clock once and write any correction now due; return how many were written."""
        self._observe(self.inner.monotonic(), self.inner.wall(), self.inner.synced())
        with self._lock:
            store, synced_at, segments = self._store, self._synced_at, list(self._segments)
            if synced_at is not None:
                self._segments, self._synced_at = [], None
                self._dirty = True
        if store is None:
            return 0
        written = 0
        unwritten, self._unwritten = self._unwritten, []
        for correction in unwritten:  # those the store refused last time, oldest first
            written += self._record(store, correction)
        if synced_at is not None:
            written += self._correct(store, segments, synced_at)
        written += self._correct_late(store)
        self._save(store)  # after the corrections: a crash in between corrects twice rather than never
        return written

    def _correct(self, store: CorrectionStore, segments: list[_Segment], synced_at: tuple[float, float, StorePosition]) -> int:
        """Write one correction per unsynced segment that stamped records."""
        sync_mono, sync_offset, sync_position = synced_at
        written = 0
        for i, seg in enumerate(segments):
            end = segments[i + 1].start if i + 1 < len(segments) else sync_position
            records = store.unsynced_records(seg.start, end)
            seq = (seg.start.seq + 1, end.seq) if end.seq > seg.start.seq else None
            if self._write(store, round((sync_offset - seg.offset_s) * 1000.0), records, seq, seg, sync_mono):
                written += 1
        self._late_after, self._late_offset, self._closed = sync_position, sync_offset, segments
        return written

    def _correct_late(self, store: CorrectionStore) -> int:
        """Correct records stamped before the sync but written after it (a backlog, a full disk).

        Each is given the offset of the segment its ``ts`` fits (the latest that fits; else the last).
        """
        after, sync_offset, segments = self._late_after, self._late_offset, self._closed
        if after is None or sync_offset is None or not segments:
            return 0
        now = store.clock_position()
        if now.rowids == after.rowids:
            return 0
        records = store.unsynced_records(after, now)
        self._late_after = now
        groups: dict[int, dict[str, list[tuple[str, float]]]] = {}
        for kind, rows in records.items():
            for rid, ts in rows:
                seg = next((g for g in reversed(segments) if g.stamped(ts, self.check_interval_s + 1.0)), segments[-1])
                groups.setdefault(id(seg), {"_": [(str(segments.index(seg)), 0.0)]}).setdefault(kind, []).append((rid, ts))
        written = 0
        for group in groups.values():
            seg = segments[int(group.pop("_")[0][0])]
            if self._write(store, round((sync_offset - seg.offset_s) * 1000.0), group, None, None, None):
                written += 1
        return written

    def _write(
        self,
        store: CorrectionStore,
        offset_ms: int,
        records: Mapping[str, list[tuple[str, float]]],
        seq: tuple[int, int] | None,
        seg: _Segment | None,
        sync_mono: float | None,
    ) -> bool:
        count = sum(len(rows) for rows in records.values())
        if count == 0:
            return False
        ids: dict[str, list[str]] = {}
        room = MAX_IDS
        for kind in sorted(records):  # event_ids first, then registration_ids, vehicle_ids, visit_ids
            ids[kind] = [rid for rid, _ in records[kind]][:room]
            room -= len(ids[kind])
        correction = {
            "kind": "clock_correction",
            "correction_id": uuid.uuid4().hex,
            "offset_ms": int(offset_ms),
            "seq_first": seq[0] if seq else None,
            "seq_last": seq[1] if seq else None,
            "count": count,
            **ids,
            "ids_complete": count <= MAX_IDS,
            "unsynced_for_s": round(sync_mono - seg.start_mono, 1) if seg is not None and sync_mono is not None else None,
            "late": seg is None,
        }
        return self._record(store, correction)

    def _record(self, store: CorrectionStore, correction: dict[str, Any]) -> bool:
        try:
            store.record_clock_correction(correction)
        except Exception as exc:  # noqa: BLE001 - the store may be full or read-only: kept, tried again at the next check
            self._unwritten.append(correction)
            log.error("clock correction not recorded, kept for the next check offset_ms=%d error=%s", correction["offset_ms"], exc)
            return False
        self.corrections += 1
        log.warning(
            "clock correction recorded offset_ms=%d records=%d seq=%s-%s late=%s",
            correction["offset_ms"],
            correction["count"],
            correction["seq_first"],
            correction["seq_last"],
            correction["late"],
        )
        return True

    def state(self) -> dict[str, Any]:
        """Return what status shows: synced, offset, steps seen, corrections written, unsynced segments pending."""
        with self._lock:
            return {
                "synced": self._synced,
                "offset_s": round(self._offset, 3) if self._offset is not None else None,
                "steps": len(self.steps),
                "corrections": self.corrections,
                "unsynced_segments": len(self._segments),
            }

    # -- the thread ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start checking every ``check_interval_s`` on a thread of its own."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="station-clock-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.check_interval_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a store error must not end the watch: checked again next time
                log.exception("clock check failed")

    def stop(self) -> None:
        """Stop the thread after one last check (a correction due now is still written)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        try:
            self.check()
        except Exception:  # noqa: BLE001 - stopping: logged, nothing more to do
            log.exception("last clock check failed")
