"""A full card while running (real ENOSPC): decided on, never acted on unrecorded, alarmed, all written once space returns.

What is real: the data directory is a 32 MiB tmpfs mounted by the test, filled with a file until the
kernel refuses with ENOSPC; SQLite, the probe and every other writer meet that refusal. Removing the
file is the space coming back. (tests/test_disk_full.py does the same with RLIMIT_FSIZE, which gives
EFBIG and needs no root.)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.support.storage_rig import FaultedStation, can_mount, fill, mounted
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(can_mount() is not None, reason=str(can_mount()))]


def test_a_full_card_holds_decisions_closed_alarms_and_writes_them_when_space_returns(tmp_path: Path) -> None:
    with mounted("-t", "tmpfs", "-o", "size=32m", "tmpfs", target=tmp_path / "card") as card:
        station = FaultedStation(tmp_path, card / "data")
        try:
            station.start()
            filled = fill(card)
            assert filled > 0
            # The lane goes on deciding from memory: two people decided while the card is full.
            wait_until(lambda: len(station.refused) >= 2, timeout=60, what="two decisions against the full card")
            assert station.app.store.storage.state == "full"
            assert not station.relay_ever_on(), "the gate acted on a decision that was not recorded"
            assert all(not r["executed"] for r in station.refused)
            wait_until(lambda: (station.mqtt_storage() or {}).get("state") == "full", timeout=15, what="state/storage full on MQTT")
            alarm = station.mqtt_storage()
            assert alarm is not None and alarm["alarm"] is True and alarm["held"] >= 1
            shown = station.display_storage()
            assert shown is not None and shown["state"] == "full" and shown["held"] >= 1
            assert "store" in station.degraded_modules()

            (card / "filler").unlink()  # space comes back
            held = len(station.refused)
            wait_until(lambda: station.app.pipeline.stats().get("recorded_late", 0) >= held, timeout=30, what="held decisions written")
            wait_until(lambda: (station.mqtt_storage() or {}).get("state") == "ok", timeout=15, what="state/storage ok again")
            assert station.display_storage() == {"state": "ok", "held": 0, "since_ts": None}
            assert "store" not in station.degraded_modules()
            result = station.finish()
        finally:
            station.close()

        db = sqlite3.connect(result.db_path)
        stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
        assert {d["event_id"] for d in station.decided} <= stored
        for r in station.refused:
            rows = db.execute("SELECT executed, reason FROM gate_actions WHERE event_id = ?", (r["event_id"],)).fetchall()
            assert rows and all(executed == 0 for executed, _ in rows) and rows[0][1].startswith("fault: event not recorded")
        db.close()
