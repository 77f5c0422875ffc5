"""No raw health-code payload, ID number, name or address reaches the disk or MQTT.

A real demo run (emulated thermal module on a pty, rendered camera showing real signed HC1 codes,
real zbar, real SQLite, real sync to a real mosquitto) with a wiretap on ``#``. Afterwards every
file in the data dir (SQLite database, WAL, replay memory, salt, trust list…) and every MQTT
message is scanned for each person's payload, for distinctive pieces of it (12-character windows
of its Base45 text), for its COSE signature and claims bytes (raw, hex and base64), and for the
holder reference the code carries. Snapshot pictures sent to the board are decoded as QR too. The
ninth person of the demo has no phone and puts a (made-up) resident ID card on the emulated reader:
their ID number (whole, and every 10-digit window of it), name, address and issuing authority are
looked for as UTF-8, UTF-16 and JSON-escaped text.
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from sim.demo import DemoRun
from sim.idcard_emulator import EmulatedCard
from station.codes import hc1
from station.config import StationConfig
from tests.support.broker import Broker, mosquitto_available
from tests.support.sync_rig import Collector

pytestmark = pytest.mark.skipif(not mosquitto_available(), reason="mosquitto not installed")


def card_needles(card: EmulatedCard) -> list[bytes]:
    """Return every form in which a card's identity could leak."""
    texts = [card.id_number, card.name, card.address, card.authority]
    texts += [card.id_number[i : i + 10] for i in range(len(card.id_number) - 9)]
    out: list[bytes] = []
    for t in texts:
        out += [t.encode(), t.encode("utf-16-le"), json.dumps(t).strip('"').encode()]
    return out


def needles(payload: bytes) -> list[bytes]:
    text = payload.decode()
    body = text[len(hc1.PREFIX) :]
    out = [payload, body.encode()]
    out += [body[i : i + 12].encode() for i in range(0, len(body) - 12, 6)]
    cose = hc1.unwrap(text)
    claims = cose.payload
    for blob in (cose.signature, claims, cose.signature[:16], zlib.compress(claims)[:24]):
        out += [blob, blob.hex().encode(), base64.b64encode(blob)]
    return out


@pytest.mark.slow
def test_no_raw_payload_in_sqlite_files_or_mqtt_messages(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    wire = Collector(broker.port, "wiretap", "#", persistent=False)
    try:
        assert wire.subscribed.wait(5)
        cfg = StationConfig()
        cfg.mqtt.url = broker.url
        cfg.snapshots.interval_s = 1.0  # more board pictures, each a chance to leak a readable QR
        data = tmp_path / "data"
        run = DemoRun(cfg, people=9, data_dir=data, fast=True)
        payloads = [p.code_payload for p in run.people if p.code_payload and p.code_payload.startswith(b"HC1:")]
        assert len(payloads) >= 5
        cards = [p.id_card for p in run.people if p.id_card is not None]
        assert len(cards) == 1
        result = run.run()
        judged = [d.event.code for _, d in result.decided if d.event.code.get("source") == "hc1"]
        assert judged and all(c.get("payload_hash") and c.get("kid") for c in judged)  # what is kept instead
        carded = [d.event.code for _, d in result.decided if d.event.code.get("source") == "idcard"]
        number = cards[0].id_number
        assert len(carded) == 1, "the ID card person was decided on their card"
        assert carded[0]["id_masked"] == number[0] + "*" * 16 + number[-1] and carded[0]["subject_ref"]
    finally:
        wire.client.disconnect()  # before loop_stop(): paho's thread then ends at once, not after 1 s
        wire.client.loop_stop()
        broker.stop()

    messages = wire.raw()
    events = [m for m in messages if "/events/screening" in m[0]]
    assert len(events) >= 9, "the demo's events went out over MQTT"
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name == "events.sqlite3" for p in files) and any(p.name == "seen.sqlite3" for p in files)
    blobs = [(f"file {p}", p.read_bytes()) for p in files] + [(f"mqtt {t}", t.encode() + b"\n" + m) for t, m, _ in messages]
    holders = [f"demo-person-{i}".encode() for i in range(9)]
    for payload in payloads:
        for needle in needles(payload) + holders:
            for where, blob in blobs:
                assert needle not in blob, f"{where} holds a piece of a raw payload: {needle[:40]!r}"
    for needle in card_needles(cards[0]):
        for where, blob in blobs:
            assert needle not in blob, f"{where} holds a piece of an ID card's identity: {needle!r}"

    # The board's snapshot pictures: no QR in them may decode to a payload.
    import cv2

    from drivers.codes.pyzbar_reader import PyzbarReader

    reader = PyzbarReader(max_side=4096)
    pictures = 0
    for topic, msg, _ in messages:
        if topic.endswith("/snapshot"):
            body = json.loads(msg)
            img = cv2.imdecode(np.frombuffer(base64.b64decode(body["jpeg_b64"]), np.uint8), cv2.IMREAD_COLOR)
            pictures += 1
            for scale in (1, 2, 3):
                big = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST) if scale > 1 else img
                for code in reader.decode(big):
                    assert not code.payload.startswith(b"HC1:"), "a snapshot sent to the board shows a readable health code"
    assert pictures >= 1


def test_a_board_snapshot_never_carries_a_readable_code() -> None:
    """Deterministic half of the picture check: a frame with a phone's HC1 code in full view."""
    import time

    import cv2
    import zxingcpp

    from sim.issuer import demo_issuer
    from sim.scene_camera import qr_matrix, render_qr
    from station.link.snapshots import SnapshotSettings, encode_jpeg, render_snapshot

    payload = demo_issuer().issue("green", iat=time.time(), exp=time.time() + 600).encode()
    qr = render_qr(qr_matrix(payload), (60, 160, 60), 4, 4)
    frame = np.full((480, 640, 3), 200, np.uint8)
    frame[100 : 100 + qr.shape[0], 200 : 200 + qr.shape[1]] = qr
    settings = SnapshotSettings(max_width=320, quality=70, blur_faces=False)

    def readable(jpeg: bytes) -> list[bytes]:
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        return [r.bytes for r in zxingcpp.read_barcodes(img)]

    plain, _, _ = encode_jpeg(frame, settings.max_width, settings.quality)
    assert readable(plain) == [payload]  # control: without redaction the board would get the payload
    jpeg, meta = render_snapshot(frame, None, settings)
    assert meta["codes_blanked"] == 1 and readable(jpeg) == []
