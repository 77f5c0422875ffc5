"""Station snapshots: faces blurred (real ONNX detector on real photos), fail-closed, and the
retained QoS 0 `snapshot` topic on a real mosquitto."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from station.domain.model import VisibleFrame
from station.lane.vision import UnavailableFaceDetector, build_face_detector, detector_state
from station.link.snapshots import (
    LatestFrame,
    SnapshotPublisher,
    SnapshotSettings,
    decode_snapshot,
    render_snapshot,
    snapshot_payload,
    snapshot_topic,
)
from station.models import default_models_dir
from tests.support.broker import Broker, mosquitto_available
from tests.support.waiting import wait_until

FACES = Path("/work/shared/data/images/faces")
PHOTO = FACES / "ultraface-5.jpg"  # one woman at a desk, frontal


def sharpness(img: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


@pytest.fixture(scope="module")
def detector():  # type: ignore[no-untyped-def]
    d = build_face_detector("ultraface-rfb-320", default_models_dir(), score_threshold=0.5)
    assert detector_state(d) == "ok", detector_state(d)
    d.warm_up()
    return d


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    if not PHOTO.exists():
        pytest.skip(f"test photo missing: {PHOTO}")
    img = cv2.imread(str(PHOTO))
    h, w = img.shape[:2]
    return cv2.resize(img, (640, round(h * 640 / w)))  # a camera-sized frame


def decoded(jpeg: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def test_faces_are_blurred_and_the_rest_is_kept(detector, photo) -> None:  # type: ignore[no-untyped-def]
    faces = detector.detect(photo)
    assert faces, "the detector finds the face in the original photo"
    settings = SnapshotSettings(max_width=640, quality=90, blur_faces=True)
    jpeg, meta = render_snapshot(photo, detector, settings)
    assert jpeg[:2] == b"\xff\xd8" and meta["blur"] == "faces" and meta["faces_blurred"] == len(faces)
    out = decoded(jpeg)
    assert out.shape == photo.shape
    for f in faces:
        b = f.box
        x1, y1, x2, y2 = int(b.x1), int(b.y1), int(b.x2), int(b.y2)
        before, after = sharpness(photo[y1:y2, x1:x2]), sharpness(out[y1:y2, x1:x2])
        assert after < 0.05 * before, f"face detail left: Laplacian variance {before:.0f} → {after:.0f}"
    # Away from the faces the picture is still the picture (JPEG noise only).
    mask = np.ones(photo.shape[:2], bool)
    for f in faces:
        b = f.box
        mx, my = b.width, b.height  # well beyond the blur margin
        mask[max(0, int(b.y1 - my)) : int(b.y2 + my), max(0, int(b.x1 - mx)) : int(b.x2 + mx)] = False
    diff = np.abs(out.astype(int) - photo.astype(int)).mean(axis=2)[mask]
    assert diff.mean() < 4.0
    assert detector.detect(out) == [], "no face is detectable in the published picture"


def test_without_blur_the_face_stays(detector, photo) -> None:  # type: ignore[no-untyped-def]
    jpeg, meta = render_snapshot(photo, detector, SnapshotSettings(max_width=640, quality=90, blur_faces=False))
    assert meta["blur"] == "off"
    assert detector.detect(decoded(jpeg)), "blur_faces = false publishes the picture as it is"


def test_unavailable_detector_blurs_everything(photo) -> None:  # type: ignore[no-untyped-def]
    broken = UnavailableFaceDetector("ultraface-rfb-320", "model missing")
    jpeg, meta = render_snapshot(photo, broken, SnapshotSettings(max_width=640, quality=90))
    assert meta["blur"] == "all"
    out = decoded(jpeg)
    assert sharpness(out) < 0.05 * sharpness(photo), "fail closed: no detector, no detail anywhere"


def test_downscaled_to_max_width(detector, photo) -> None:  # type: ignore[no-untyped-def]
    jpeg, meta = render_snapshot(photo, detector, SnapshotSettings(max_width=320, quality=70))
    out = decoded(jpeg)
    assert out.shape[1] == meta["width"] == 320 and out.shape[0] == meta["height"] == round(photo.shape[0] / 2)
    assert len(jpeg) < 40_000


def test_payload_round_trip_and_rejects_non_jpeg() -> None:
    payload = snapshot_payload(b"\xff\xd8jpegdata", {"blur": "faces", "faces_blurred": 1}, {"station_id": "l1", "site": "s"}, 12.5)
    jpeg, meta = decode_snapshot(payload)
    assert jpeg == b"\xff\xd8jpegdata" and meta["station_id"] == "l1" and meta["ts"] == 12.5 and meta["schema"] == 1
    with pytest.raises(ValueError):
        decode_snapshot(snapshot_payload(b"GIF89a", {}, {}, 0.0))


@pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")
def test_publisher_sends_a_retained_snapshot_a_late_subscriber_gets(tmp_path: Path, detector, photo) -> None:  # type: ignore[no-untyped-def]
    from drivers.publish.mqtt import MqttPublisher

    broker = Broker(tmp_path / "broker")
    broker.start()
    pub = MqttPublisher(broker.url, "snap-test", "t/status", b"offline", b"online", protocol="5")
    try:
        pub.start()
        assert wait_until(pub.connected, 5, "publisher connected")
        topic = snapshot_topic("checkpoint/v1", "site-a", "lane-9")
        frames = LatestFrame()
        snaps = SnapshotPublisher(
            frames,
            detector,
            lambda p: pub.publish_direct(topic, p, qos=0, retain=True),
            {"station_id": "lane-9", "site": "site-a"},
            SnapshotSettings(),
        )
        assert not snaps.publish_once(), "no frame yet: nothing to publish"
        frames.offer(VisibleFrame(photo, seq=1, t=0.0))
        assert snaps.publish_once()
        assert not snaps.publish_once(), "the same frame is not sent twice"
        assert snaps.stats()["published"] == 1
        # The broker handles one connection's messages in order: once a later QoS 1 message is
        # acknowledged, the QoS 0 snapshot is stored as retained and a later subscriber must get it.
        acked: set[int] = set()
        pub.set_ack_handler(acked.add)
        barrier = pub.publish("t/barrier", b"", qos=1)
        assert wait_until(lambda: barrier in acked, 5, "the broker acknowledges the barrier message")

        got: list[mqtt.MQTTMessage] = []
        arrived = threading.Event()
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="late-board", protocol=MQTTProtocolVersion.MQTTv5)
        sub.on_connect = lambda c, *a: c.subscribe("checkpoint/v1/+/+/snapshot", qos=0)
        sub.on_message = lambda c, u, m: (got.append(m), arrived.set())
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        try:
            assert arrived.wait(5), "the retained snapshot reaches a board that subscribes later"
        finally:
            sub.disconnect()
            sub.loop_stop()
        msg = got[0]
        assert msg.topic == topic and msg.retain and msg.qos == 0
        jpeg, meta = decode_snapshot(msg.payload)
        assert meta["blur"] == "faces" and meta["faces_blurred"] >= 1
        assert detector.detect(decoded(jpeg)) == []
    finally:
        pub.stop()
        broker.kill()
