"""The centre's live pictures: the snapshot store (latest only, bounded, counted), its total parser, the watch leases.

Pictures are real JPEGs made by the station's own snapshot code (station/link/snapshots.py) from a
real photo; hostile payloads are hand-made and from Hypothesis.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.centre.live import (
    MAX_SNAPSHOT_PAYLOAD,
    STALE_WINDOW_S,
    LiveHub,
    Picture,
    Rejected,
    SnapshotStore,
    WatchLeases,
    parse_snapshot,
    split_snapshot_topic,
)
from station.link.snapshots import SnapshotSettings, render_snapshot, snapshot_payload

PHOTO = Path("/work/shared/data/images/faces/ultraface-5.jpg")
SITE, STATION = "gate-a", "st-01"
IDENTITY = {"station_id": STATION, "site": SITE}


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    image = cv2.imread(str(PHOTO)) if PHOTO.exists() else None
    if image is None:  # a drawn scene when the shared photos are absent
        image = np.full((240, 320, 3), 80, np.uint8)
        cv2.circle(image, (160, 120), 60, (200, 180, 160), -1)
    out, _meta = render_snapshot(image, None, SnapshotSettings(blur_faces=True))  # no detector: all blurred (fail closed)
    return out


def payload(jpeg: bytes, at: float = 1796371200.0, **over: object) -> bytes:
    body = json.loads(snapshot_payload(jpeg, {"blur": "all", "faces_blurred": None, "width": 320, "height": 240}, IDENTITY, at))
    body.update(over)
    return json.dumps(body).encode()


def picture(n: int, ts: float, received_at: float = 0.0) -> Picture:
    return Picture(b"\xff\xd8\xff" + bytes(n) + b"\xff\xd9", ts, "faces", 0, 320, 240, received_at)


def test_a_station_snapshot_is_kept_byte_for_byte_with_its_blur_mode(jpeg: bytes) -> None:
    got = parse_snapshot(SITE, STATION, payload(jpeg), received_at=5.0)
    assert isinstance(got, Picture)
    assert got.jpeg == jpeg, "the centre passes the station's (blurred) bytes on, never re-encodes them"
    assert (got.ts, got.blur, got.width, got.height, got.received_at) == (1796371200.0, "all", 320, 240, 5.0)
    assert got.meta()["bytes"] == len(jpeg)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda j: b"x" * (MAX_SNAPSHOT_PAYLOAD + 1), "too_large"),
        (lambda j: b"\xff\xfe not utf-8", "not_json"),
        (lambda j: b"{" * 5000, "not_json"),
        (lambda j: b"[" * 100000 + b"]" * 100000, "not_json"),
        (lambda j: b"[1, 2]", "not_object"),
        (lambda j: payload(j, jpeg_b64=None), "no_jpeg"),
        (lambda j: payload(j, jpeg_b64=""), "no_jpeg"),
        (lambda j: payload(j, jpeg_b64="not base64 at all!"), "bad_base64"),
        (lambda j: payload(j, jpeg_b64=base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(200)).decode()), "not_jpeg"),
        (lambda j: payload(j, jpeg_b64=base64.b64encode(j[:-2]).decode()), "not_jpeg"),  # cut short: no end marker
        (lambda j: payload(j, jpeg_b64=base64.b64encode(b"\xff\xd8\xff\xd9").decode()), "not_jpeg"),  # too small to be a picture
        (lambda j: payload(j, station_id="st-02"), "sender_mismatch"),
        (lambda j: payload(j, site="other"), "sender_mismatch"),
        (lambda j: payload(j, ts="yesterday"), "bad_ts"),
        (lambda j: payload(j, ts=10.0**20), "bad_ts"),
        (lambda j: payload(j, ts=True), "bad_ts"),
    ],
)
def test_hostile_payloads_are_refused_with_their_reason(jpeg: bytes, make: object, reason: str) -> None:
    got = parse_snapshot(SITE, STATION, make(jpeg), received_at=0.0)  # type: ignore[operator]
    assert got == Rejected(reason)


def test_markup_in_the_metadata_never_survives(jpeg: bytes) -> None:
    got = parse_snapshot(SITE, STATION, payload(jpeg, blur="<script>alert(1)</script>", width="<b>", faces_blurred=-3), 0.0)
    assert isinstance(got, Picture) and (got.blur, got.width, got.faces_blurred) == (None, None, None)


@pytest.mark.parametrize(
    "topic",
    [
        "checkpoint/v1/gate-a/st-01/state/camera",
        "checkpoint/v1/gate-a/snapshot",
        "other/v1/gate-a/st-01/snapshot",
        "checkpoint/v1/gate a/st-01/snapshot",
        "checkpoint/v1/gate-a/st-01\n/snapshot",
        "checkpoint/v1/" + "x" * 600 + "/st-01/snapshot",
        b"checkpoint/v1/gate-a/st-01/snapshot",
    ],
)
def test_a_topic_that_is_not_a_station_snapshot_is_refused(topic: object) -> None:
    assert split_snapshot_topic("checkpoint/v1", topic) == Rejected("bad_topic")


def test_a_station_snapshot_topic_names_its_site_and_station() -> None:
    assert split_snapshot_topic("checkpoint/v1/", "checkpoint/v1/gate-a/st-01/snapshot") == ("gate-a", "st-01")


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048) | st.text(max_size=512).map(str.encode))
def test_any_bytes_give_a_picture_or_a_reason(raw: bytes) -> None:
    got = parse_snapshot(SITE, STATION, raw, 0.0)
    assert isinstance(got, (Picture, Rejected))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=20), lambda c: st.lists(c) | st.dictionaries(st.text(max_size=10), c)
    )
)
def test_any_json_gives_a_picture_or_a_reason(value: object) -> None:
    got = parse_snapshot(SITE, STATION, json.dumps(value).encode(), 0.0)
    assert isinstance(got, Rejected)


def test_the_store_keeps_only_the_newest_picture_per_station() -> None:
    store = SnapshotStore()
    assert store.offer(SITE, STATION, picture(100, ts=10.0, received_at=0.0)) == "stored"
    assert store.offer(SITE, STATION, picture(200, ts=11.0, received_at=1.0)) == "stored"
    held = store.get(SITE, STATION)
    assert held is not None and held.ts == 11.0
    assert store.offer(SITE, STATION, picture(300, ts=10.5, received_at=2.0)) == "stale", "a re-delivered older copy"
    held = store.get(SITE, STATION)
    assert held is not None and held.ts == 11.0
    stats = store.stats()
    assert stats["stations"] == 1 and stats["bytes"] == 205, "one picture's bytes, the replaced one freed"
    # Long after: an older time is the station's clock stepped back, not a stale copy.
    assert store.offer(SITE, STATION, picture(50, ts=9.0, received_at=2.0 + STALE_WINDOW_S)) == "stored"
    assert store.remove(SITE, STATION) and store.get(SITE, STATION) is None and store.stats()["bytes"] == 0
    assert store.stats()["counts"] == {"stored": 3, "stale": 1, "cleared": 1}


def test_the_store_is_bounded_in_stations_and_bytes_evicting_the_least_recently_updated() -> None:
    store = SnapshotStore(max_stations=3, max_bytes=1000)
    for i in range(3):
        store.offer("s", f"st-{i}", picture(100, ts=float(i)))
    store.offer("s", "st-0", picture(100, ts=10.0))  # st-0 updated: st-1 is now the oldest
    store.offer("s", "st-3", picture(100, ts=11.0))
    assert store.get("s", "st-1") is None and store.get("s", "st-0") is not None
    assert store.stats()["stations"] == 3 and store.stats()["counts"]["evicted"] == 1
    store.offer("s", "st-9", picture(800, ts=12.0))  # 3 x 105 + 805 > 1000 with 4 > 3 stations: the two oldest go
    assert store.stats()["bytes"] <= 1000 and store.get("s", "st-9") is not None
    assert store.stats()["counts"]["evicted"] == 3
    assert store.offer("s", "huge", picture(2000, ts=13.0)) == "too_large", "one picture over the whole budget is refused"
    assert store.get("s", "huge") is None


def test_refused_payloads_are_counted_and_never_stored(jpeg: bytes) -> None:
    store = SnapshotStore()
    for raw in (b"garbage", payload(jpeg, station_id="intruder"), b"x" * (MAX_SNAPSHOT_PAYLOAD + 10)):
        store.offer(SITE, STATION, parse_snapshot(SITE, STATION, raw, 0.0))
    assert store.get(SITE, STATION) is None
    assert store.stats()["counts"] == {"not_json": 1, "sender_mismatch": 1, "too_large": 1}
    assert store.stats()["stations"] == 0 and store.stats()["bytes"] == 0


def test_a_watch_lease_is_sent_once_per_lease_and_ends_when_nobody_renews() -> None:
    leases = WatchLeases(lease_s=45, renew_margin_s=20, page_lease_s=25, min_send_interval_s=5, max_watched=2)
    key = (SITE, STATION)
    assert leases.renew(key, 0.0) == (True, "due")
    leases.sent(key, 0.0)
    assert leases.renew(key, 10.0) == (False, "station_lease_running")
    assert leases.renew(key, 20.0) == (False, "station_lease_running")
    assert leases.renew(key, 30.0) == (True, "due"), "15 s left: renewed before it runs out"
    leases.sent(key, 30.0)
    assert leases.station_until(key) == 75.0
    assert leases.watched(50.0) == [key] and leases.watched(56.0) == [], "the page's renewal holds 25 s"
    assert leases.renew(("s", "a"), 100.0) == (True, "due") and leases.renew(("s", "b"), 100.0) == (True, "due")
    assert leases.renew(("s", "c"), 100.0) == (False, "too_many_watched"), "bounded; the expired watch was forgotten"


def test_a_failed_send_is_not_retried_faster_than_the_minimum_interval() -> None:
    leases = WatchLeases(lease_s=45, renew_margin_s=20, min_send_interval_s=5)
    key = (SITE, STATION)
    leases.renew(key, 0.0)
    leases.sent(key, 0.0)
    leases._leases[key].station_until = 0.0  # as if the lease were gone (the station restarted)
    assert leases.renew(key, 3.0) == (False, "sent_recently")
    assert leases.renew(key, 6.0) == (True, "due")


def test_lease_settings_that_could_never_renew_in_time_are_refused() -> None:
    with pytest.raises(ValueError, match="renew_margin_s"):
        WatchLeases(lease_s=10, renew_margin_s=10)


def test_without_a_command_key_the_hub_shows_pictures_but_sends_no_watch() -> None:
    hub = LiveHub("mqtt://127.0.0.1:1")
    state = hub.watch(SITE, STATION)
    assert state["sent"] is False and state["why"] == "no_command_key"
    assert hub.stats()["signing"] is False and hub.stats()["counts"] == {"renew_no_command_key": 1}


def test_a_bad_command_key_is_refused_naming_the_option(tmp_path: Path) -> None:
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    with pytest.raises(ValueError, match="--command-key"):
        LiveHub("mqtt://127.0.0.1:1883", key_path=bad)


def test_every_replica_has_a_live_hub_signing_with_the_command_key_when_given(tmp_path: Path) -> None:
    from station.centre.run import Centre, CentreOptions
    from station.link.command_auth import new_signing_key, private_pem

    key = tmp_path / "centre-key.pem"
    key.write_bytes(private_pem(new_signing_key()))
    base = {"mqtt_url": "mqtt://127.0.0.1:1", "db_url": "postgresql://nobody@127.0.0.1:1/none"}
    with_key = Centre(CentreOptions(**base, command_key=str(key))).screen.live
    without = Centre(CentreOptions(**base)).screen.live
    assert isinstance(with_key, LiveHub) and with_key.key is not None and with_key.prefix == "checkpoint/v1"
    assert isinstance(without, LiveHub) and without.key is None, "pictures without a key; no watch leases"
