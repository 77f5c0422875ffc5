"""A card the kernel turns read-only while running (real EROFS): decided on, never acted on unrecorded, alarmed, written when back.

What is real: the data directory is an ext4 file system (an image on a loop device) mounted with
``errors=remount-ro``, the option Raspberry Pi OS uses for its root; the test makes ext4 report an
error through its own test hook (``/sys/fs/ext4/<dev>/trigger_fs_error``), and the kernel then refuses
every write on it with EROFS, exactly as after an I/O error from a worn SD card. The test checks the
errno itself. A ``mount -o remount,ro`` cannot stand in for it: the kernel refuses that with EBUSY
while the station holds files open for writing.

What stands in for the field: the way the card comes back. Since Linux 6.x such an ext4 stays
read-only until it is unmounted, and the station still holds handles on it, so the test does what
an operator would: lazily unmount it, copy the card onto a new one, ``e2fsck`` it and mount it at the
same place. The store reopens its file there before its next write and writes what it held.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.support.storage_rig import FaultedStation, can_mount, mounted, run
from tests.support.waiting import wait_until

TOOLS = ("mkfs.ext4", "e2fsck", "losetup", "findmnt")
missing = can_mount() or next((f"{t} not installed" for t in TOOLS if not shutil.which(t)), None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing is not None, reason=str(missing))]


def make_card(path: Path) -> Path:
    """Create a 64 MiB ext4 image (no journal needed to show the fault; one keeps it like the field)."""
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    run("mkfs.ext4", "-q", "-F", str(path))
    return path


def ext4_device(mountpoint: Path) -> str:
    """Return the block device name (``loopN``) that ext4 names its sysfs directory after."""
    return Path(run("findmnt", "-no", "SOURCE", str(mountpoint)).strip()).name


def write_errno(directory: Path) -> int | None:
    """Return the errno the kernel gives a new file in ``directory`` now, or None when it takes it."""
    probe = directory / "test-probe"
    try:
        probe.write_bytes(b"x")
    except OSError as exc:
        return exc.errno
    probe.unlink()
    return None


def test_a_card_gone_read_only_holds_decisions_closed_alarms_and_writes_them_when_it_is_back(tmp_path: Path) -> None:
    image = make_card(tmp_path / "card.img")
    card = tmp_path / "card"
    try:
        with mounted("-o", "loop,errors=remount-ro", str(image), target=card):
            station = FaultedStation(tmp_path, card / "data")
            try:
                station.start()
                assert write_errno(card) is None
                (Path("/sys/fs/ext4") / ext4_device(card) / "trigger_fs_error").write_text("checkpoint test: card failing\n")
                assert write_errno(card) == errno.EROFS, "the kernel did not turn the card read-only"

                wait_until(lambda: len(station.refused) >= 2, timeout=60, what="two decisions against the read-only card")
                assert station.app.store.storage.state == "read_only"
                assert not station.relay_ever_on(), "the gate acted on a decision that was not recorded"
                wait_until(
                    lambda: (station.mqtt_storage() or {}).get("state") == "read_only", timeout=15, what="state/storage read_only on MQTT"
                )
                alarm = station.mqtt_storage()
                assert alarm is not None and alarm["alarm"] is True and alarm["held"] >= 1
                shown = station.display_storage()
                assert shown is not None and shown["state"] == "read_only" and shown["held"] >= 1
                assert "store" in station.degraded_modules()

                # The card comes back: unmounted (lazily: the station still holds handles), copied to a new one, checked, mounted.
                run("umount", "-l", str(card))
                fresh = tmp_path / "card-2.img"
                shutil.copyfile(image, fresh)
                fsck = subprocess.run(["e2fsck", "-fy", str(fresh)], capture_output=True, text=True, timeout=60)
                assert fsck.returncode in (0, 1, 2), fsck.stdout + fsck.stderr  # 1, 2: errors corrected
                with mounted("-o", "loop", str(fresh), target=card):
                    held = len(station.refused)
                    wait_until(
                        lambda: station.app.pipeline.stats().get("recorded_late", 0) >= held, timeout=30, what="held decisions written"
                    )
                    wait_until(lambda: (station.mqtt_storage() or {}).get("state") == "ok", timeout=15, what="state/storage ok again")
                    assert station.display_storage() == {"state": "ok", "held": 0, "since_ts": None}
                    result = station.finish()
                    db = sqlite3.connect(result.db_path)
                    stored = {row[0] for row in db.execute("SELECT event_id FROM events")}
                    assert {d["event_id"] for d in station.decided} <= stored, "a decision is missing from the card"
                    for r in station.refused:
                        rows = db.execute("SELECT executed, reason FROM gate_actions WHERE event_id = ?", (r["event_id"],)).fetchall()
                        assert rows and all(executed == 0 for executed, _ in rows)
                    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                    db.close()
            finally:
                station.close()
    finally:
        os.sync()
