"""``cmd/resident-plates`` over a real mosquitto: the list is replaced atomically, a bad list is
refused with the old one kept, and the plate thread's view of the list follows the push."""

from __future__ import annotations

from pathlib import Path

import pytest

from station import residents
from station.domain.vehicles import OUTSIDER, RESIDENT, VehicleLane
from tests.mosquitto import mosquitto_available
from tests.test_commands import Rig, rig  # noqa: F401  (rig is the fixture)

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")


def read(text: str, x: float) -> dict:
    return {"text": text, "confidence": 0.9, "score": 0.95, "box": [x, 300.0, x + 120.0, 340.0]}


def test_resident_plates_push_replaces_the_list_and_the_lane_follows(rig: Rig, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "data" / residents.FILE_NAME
    live = residents.ResidentFile(path)  # what the daemon's plate thread holds
    lane = VehicleLane(live, min_reads=1, memory_s=0.5)
    assert [e.kind for e in lane.on_plates([read("皖K66666", 200)], 0.0)] == [OUTSIDER]

    reply = rig.call("resident-plates", {"id": "p-1", "args": {"plates": ["皖K·66666", "浙a12345", "皖K66666"]}})
    assert reply["ok"] and reply["id"] == "p-1", reply
    assert reply["result"]["count"] == 2 and reply["result"]["version"] == 1  # duplicate dropped, first push
    assert residents.load(path) == ["皖K66666", "浙A12345"] and residents.version(path) == 1
    # The next vehicle (a new track, 2 s later) is judged against the pushed list.
    assert [e.kind for e in lane.on_plates([read("皖K66666", 210)], 2.0)] == [RESIDENT]

    # One bad entry refuses the whole list; the file is untouched.
    before = path.read_bytes()
    bad = rig.call("resident-plates", {"id": "p-2", "args": {"plates": ["鲁L88888", "not a plate!", 7]}})
    assert not bad["ok"] and "old list is kept" in bad["error"] and "2 bad entries" in bad["error"]
    assert path.read_bytes() == before
    assert not rig.call("resident-plates", {"id": "p-3", "args": {"plates": "鲁L88888"}})["ok"]

    # An explicit version must be newer: a replayed older push cannot undo a newer list.
    assert rig.call("resident-plates", {"id": "p-4", "args": {"plates": ["鲁L88888"], "version": 5}})["result"]["version"] == 5
    stale = rig.call("resident-plates", {"id": "p-5", "args": {"plates": [], "version": 4}})
    assert not stale["ok"] and "not newer" in stale["error"]
    assert live() == {"鲁L88888"}
    # An empty list is a valid list (no residents): every vehicle is an outsider.
    empty = rig.call("resident-plates", {"id": "p-6", "args": {"plates": []}})
    assert empty["ok"] and empty["result"] == {**empty["result"], "count": 0, "version": 6}
    assert live() == frozenset()
