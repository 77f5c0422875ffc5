"""``cmd/resident-plates`` over a real mosquitto: the list is replaced atomically, a bad list is
refused with the old one kept, and the plate thread's view of the list follows the push."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from station.domain.vehicles import OUTSIDER, RESIDENT, VehicleLane
from station.store import residents
from tests.support.broker import mosquitto_available
from tests.support.command_rig import Rig

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def read(text: str, x: float) -> dict:
    return {"text": text, "confidence": 0.9, "score": 0.95, "box": [x, 300.0, x + 120.0, 340.0]}


def test_resident_plates_push_replaces_the_list_and_the_lane_follows(rig: Rig, tmp_path: Path) -> None:
    path = tmp_path / "data" / residents.FILE_NAME
    live = residents.ResidentFile(path)  # what the daemon's plate thread holds
    lane = VehicleLane(live, min_reads=1, memory_s=0.5)
    assert [e.kind for e in lane.on_plates([read("皖K66666", 200)], 0.0)] == [OUTSIDER]

    reply = rig.call("resident-plates", rig.signed("resident-plates", {"plates": ["皖K·66666", "浙a12345", "皖K66666"]}, command_id="p-1"))
    assert reply["ok"] and reply["id"] == "p-1", reply
    assert reply["result"]["count"] == 2 and reply["result"]["version"] == 1  # duplicate dropped, first push
    assert residents.load(path) == ["皖K66666", "浙A12345"] and residents.version(path) == 1
    # The next vehicle (a new track, 2 s later) is judged against the pushed list.
    assert [e.kind for e in lane.on_plates([read("皖K66666", 210)], 2.0)] == [RESIDENT]

    # One bad entry refuses the whole list; the file is untouched.
    before = path.read_bytes()
    bad = rig.call("resident-plates", rig.signed("resident-plates", {"plates": ["鲁L88888", "not a plate!", 7]}))
    assert not bad["ok"] and "old list is kept" in bad["error"] and "2 bad entries" in bad["error"]
    assert path.read_bytes() == before
    assert not rig.call("resident-plates", rig.signed("resident-plates", {"plates": "鲁L88888"}))["ok"]

    # An explicit version must be newer: a replayed older push cannot undo a newer list.
    assert rig.call("resident-plates", rig.signed("resident-plates", {"plates": ["鲁L88888"], "version": 5}))["result"]["version"] == 5
    stale = rig.call("resident-plates", rig.signed("resident-plates", {"plates": [], "version": 4}))
    assert not stale["ok"] and "not newer" in stale["error"]
    assert live() == {"鲁L88888"}
    # An empty list is a valid list (no residents): every vehicle is an outsider.
    empty = rig.call("resident-plates", rig.signed("resident-plates", {"plates": []}))
    assert empty["ok"] and empty["result"] == {**empty["result"], "count": 0, "version": 6}
    assert live() == frozenset()
