"""The station's watch lease: a signed ``watch`` raises the snapshot rate, the lease ends by itself.

The lease arithmetic runs on a manual clock; the publisher's own thread is timed on the real one
(pictures counted as they are published); the ``watch`` command goes through the real command link
on a real mosquitto (tests/support/command_rig.py): signed it is honoured, unsigned it is refused,
and a station without snapshots says so.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from station.domain.model import VisibleFrame
from station.link.snapshots import SnapshotPublisher, SnapshotSettings
from tests.support.broker import mosquitto_available
from tests.support.waiting import wait_until


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class MovingScene:
    """A frame source whose every frame is new (a camera that keeps delivering): a grey picture with a moving bar."""

    def __init__(self) -> None:
        self.seq = itertools.count(1)

    def take(self) -> VisibleFrame:
        n = next(self.seq)
        image = np.full((120, 160, 3), 90, np.uint8)
        image[:, (n * 7) % 150 : (n * 7) % 150 + 10] = 230
        return VisibleFrame(image, n, time.monotonic())


def _publisher(settings: SnapshotSettings, sent: list[float], monotonic: object = time.monotonic) -> SnapshotPublisher:
    def publish(payload: bytes) -> bool:
        sent.append(time.monotonic())
        return True

    return SnapshotPublisher(MovingScene(), None, publish, {"station_id": "st-01", "site": "gate-a"}, settings, monotonic=monotonic)  # type: ignore[arg-type]


def test_a_lease_raises_the_rate_until_it_runs_out_and_is_capped() -> None:
    clock = Clock()
    pub = _publisher(SnapshotSettings(interval_s=5.0, blur_faces=False, watch_interval_s=1.0, watch_max_lease_s=30.0), [], clock)
    assert pub.current_interval() == 5.0 and not pub.watched()
    granted = pub.watch(600)
    assert granted == {"lease_s": 30.0, "interval_s": 1.0, "idle_interval_s": 5.0}, "capped at watch_max_lease_s"
    clock.t += 29.9
    assert pub.watched() and pub.current_interval() == 1.0
    clock.t += 0.2
    assert not pub.watched() and pub.current_interval() == 5.0, "the lease ends by itself"
    assert pub.stats()["watches"] == 1 and pub.stats()["watched"] == 0


def test_a_shorter_renewal_never_shortens_a_running_lease() -> None:
    clock = Clock()
    pub = _publisher(SnapshotSettings(interval_s=5.0, blur_faces=False, watch_interval_s=1.0, watch_max_lease_s=60.0), [], clock)
    pub.watch(60)
    clock.t += 10
    pub.watch(5)
    clock.t += 40
    assert pub.watched(), "the first watcher's 60 s still hold"
    clock.t += 10.1
    assert not pub.watched()


@pytest.mark.parametrize("lease", [0, -1, float("nan"), float("inf"), True, "30", None])
def test_a_lease_that_is_not_positive_seconds_is_refused(lease: object) -> None:
    pub = _publisher(SnapshotSettings(blur_faces=False), [])
    with pytest.raises(ValueError, match="lease_s"):
        pub.watch(lease)  # type: ignore[arg-type]
    assert not pub.watched()


def test_a_watched_interval_longer_than_the_idle_one_never_slows_the_station() -> None:
    pub = _publisher(SnapshotSettings(interval_s=2.0, blur_faces=False, watch_interval_s=10.0), [])
    pub.watch(30)
    assert pub.current_interval() == 2.0


@pytest.mark.slow
def test_the_publisher_thread_sends_faster_while_watched_and_falls_back() -> None:
    sent: list[float] = []
    pub = _publisher(SnapshotSettings(interval_s=2.0, blur_faces=False, watch_interval_s=0.2, watch_max_lease_s=1.5), sent)
    pub.start()
    try:
        wait_until(lambda: len(sent) >= 1, 5, "the first picture (within a second of start)")
        time.sleep(0.05)
        before = len(sent)
        t_watch = time.monotonic()
        pub.watch(1.5)
        wait_until(lambda: len(sent) >= before + 4, 3, "pictures at the watched rate")
        assert sent[before] - t_watch < 0.5, "a new lease cuts the idle wait short"
        watched_gaps = np.diff(sent[before : before + 4])
        assert float(np.max(watched_gaps)) < 0.6, watched_gaps
        wait_until(lambda: not pub.watched(), 3, "the lease ran out")
        n = len(sent)
        wait_until(lambda: len(sent) >= n + 2, 6, "pictures after the lease")
        assert sent[n + 1] - sent[n] > 1.8, "back at the idle interval (2 s)"
    finally:
        pub.stop()


# ------------------------------------------------------------------------------ the signed command


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[object]:
    if not mosquitto_available():
        pytest.skip("mosquitto not installed")
    from tests.support.command_rig import Rig

    r = Rig(tmp_path)
    yield r
    r.close()


@pytest.mark.slow
def test_a_signed_watch_is_honoured_an_unsigned_one_refused(rig: object) -> None:
    from tests.support.command_rig import Rig

    assert isinstance(rig, Rig)
    off = rig.call("watch", rig.signed("watch", {"lease_s": 20}))
    assert off["ok"] is False and "snapshots are off" in off["error"], "no publisher yet: the station says so"

    clock = Clock()
    pub = _publisher(SnapshotSettings(interval_s=5.0, blur_faces=False, watch_interval_s=1.0, watch_max_lease_s=45.0), [], clock)
    rig.handlers.snapshot_watch = pub.watch
    ok = rig.call("watch", rig.signed("watch", {"lease_s": 90}))
    assert ok["ok"] is True and ok["result"] == {"lease_s": 45.0, "interval_s": 1.0, "idle_interval_s": 5.0}, ok
    assert pub.watched()

    clock.t += 50
    unsigned = rig.call("watch", {"id": "w-1", "args": {"lease_s": 20}})
    assert unsigned["ok"] is False and unsigned["reason"] == "unsigned"
    other_station = rig.call("watch", rig.signed("watch", {"lease_s": 20}, station="st-99"))
    assert other_station["ok"] is False and other_station["reason"] == "wrong_station"
    bad = rig.call("watch", rig.signed("watch", {"lease_s": "forever"}))
    assert bad["ok"] is False and "lease_s" in bad["error"]
    assert not pub.watched(), "no refused command renewed the lease"
    watch_rows = [(r["ok"], r["reason"], r["signer"]) for r in reversed(rig.store.command_audit()) if r["command"] == "watch"]
    assert [(ok, reason) for ok, reason, _ in watch_rows] == [
        (False, "command_error: snapshots are off at this station (snapshots.enabled, or no broker): nothing to watch"),
        (True, "ok"),
        (False, "unsigned"),
        (False, "wrong_station"),
        (False, "command_error: args.lease_s must be a number of seconds > 0"),
    ], "every watch is audited at the station, honoured or refused"
    assert watch_rows[1][2].startswith("duty-officer"), "under the signed signer's name"


def test_threads_are_not_left_behind() -> None:
    assert not [t for t in threading.enumerate() if t.name == "station-snapshots"]
