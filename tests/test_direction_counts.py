"""Entry / exit counts survive a restart, and are written at most every few seconds (not per frame)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from station.lane.counts import CountsKeeper
from station.store.events import SqliteEventStore


def open_store(path: Path) -> SqliteEventStore:
    return SqliteEventStore(path, station_id="st-01", site="gate-a")


def test_counts_are_saved_rate_limited_and_restored_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "station.db"
    with open_store(db) as store:
        assert store.direction_counts() == {"entry": 0, "exit": 0}
        live = {"entry": 0, "exit": 0}
        keeper = CountsKeeper(store, live, period_s=0.25)
        keeper.restore()
        keeper.start()
        t0 = time.monotonic()
        for i in range(60):  # 60 passages in ~0.6 s: far more changes than saves
            live["entry" if i % 3 else "exit"] += 1
            time.sleep(0.01)  # passages at a real pace: the save rate limit is what is tested
        elapsed = time.monotonic() - t0
        time.sleep(0.3)  # one more save period: still no more saves than the rate allows
        assert 1 <= keeper.saves <= elapsed / 0.25 + 2, keeper.saves
        keeper.stop()  # the final totals are saved at stop
        assert store.direction_counts() == {"entry": 40, "exit": 20}
        saves = keeper.saves
        assert not keeper.save_if_changed() and keeper.saves == saves  # unchanged: no write
    with open_store(db) as store:  # "restart"
        live2 = {"entry": 0, "exit": 0}
        CountsKeeper(store, live2).restore()
        assert live2 == {"entry": 40, "exit": 20}


@pytest.mark.slow
def test_station_restart_keeps_its_direction_counts(tmp_path: Path) -> None:
    """The real station (demo devices) twice on one data dir: the second run starts from the first's totals."""
    from sim.demo import DemoRun
    from station.config import StationConfig

    def run_once() -> tuple[dict, dict]:
        # Two people: by the second one's decision the first has walked through the gate, so an entry
        # is counted however late a loaded machine first saw them (one person's count at their own
        # decision depends on how far they had walked when first detected).
        run = DemoRun(StationConfig(), people=2, data_dir=tmp_path, fast=True)
        box: dict = {}

        def on_decided(_person, _d) -> None:  # type: ignore[no-untyped-def]
            assert run.app is not None
            box["start"] = dict(run.app.counts_keeper._saved)
            box["live"] = run.app.counts_keeper.counts

        run.on_decided = on_decided
        run.run(max_s=30)
        return box["start"], dict(box["live"])

    _, first = run_once()
    from station.app import DB_NAME

    with open_store(tmp_path / DB_NAME) as store:
        saved = store.direction_counts()
    assert saved == {"entry": first["entry"], "exit": first["exit"]} and sum(saved.values()) >= 1  # the first demo person walked in
    start2, second = run_once()
    assert start2 == saved  # restored at start
    assert second["entry"] >= saved["entry"] and second["exit"] >= saved["exit"]
