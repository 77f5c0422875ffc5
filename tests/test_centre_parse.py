"""The centre's message parser: real station messages become typed rows; hostile ones a verdict with a reason, never an exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from station.centre.mqtt import events_filter
from station.centre.parse import EventRow, Rejected, parse_message
from tests.support.centre_messages import station_outbox

P = "checkpoint/v1"


def _ok(topic: str, payload: bytes) -> EventRow:
    row = parse_message(P, topic, payload)
    assert isinstance(row, EventRow), row
    return row


def test_real_station_messages_become_rows_with_envelope_and_shared_seq_for_alarm_copies(tmp_path: Path) -> None:
    msgs = station_outbox(tmp_path / "st.db", 4, alarm_every=2)  # events 1 and 3 are fever alarms
    rows = [_ok(t, p) for t, p in msgs]
    assert [(r.kind, r.seq) for r in rows] == [
        ("screening", 1),
        ("screening", 2),
        ("alarm", 2),
        ("screening", 3),
        ("screening", 4),
        ("alarm", 4),
    ]
    assert {(r.site, r.station, r.session) for r in rows} == {("gate-a", "st-01", 1)}
    assert len({r.msg_id for r in rows}) == 6
    screening, alarm = rows[1], rows[2]
    assert screening.event_id == alarm.event_id and screening.decision == alarm.decision == "deny_fever"
    assert screening.temperature_c == pytest.approx(38.4) and screening.alarm and screening.code_colour == "green"
    assert rows[0].decision == "pass" and not rows[0].alarm


def test_outbox_overflow_notice_is_an_overflow_row_with_the_dropped_count(tmp_path: Path) -> None:
    msgs = station_outbox(tmp_path / "st.db", 120, drop_to_rows=100)
    rows = [_ok(t, p) for t, p in msgs]
    overflow = [r for r in rows if r.kind == "overflow"]
    assert len(overflow) == 1 and overflow[0].dropped == 20 and overflow[0].detail == "rows"
    assert overflow[0].seq == 120, "the notice carries the current seq without consuming one"
    assert min(r.seq for r in rows if r.kind == "screening") == 21


def test_a_row_keeps_no_code_payload_face_or_plate(tmp_path: Path) -> None:
    topic, payload = station_outbox(tmp_path / "st.db", 1)[0]
    body = json.loads(payload)
    assert body["event"]["code"] and body["event"]["face"]
    row = _ok(topic, payload)
    text = json.dumps([getattr(row, f) for f in row.__slots__], default=str)
    assert "valid" not in text and "box" not in text and "0.93" not in text
    vehicle = {"schema": 1, "msg_id": "m" * 32, "station_id": "st-01", "site": "gate-a", "seq": 9, "session": 1, "ts": 1.8e9}
    vehicle["vehicle"] = {"vehicle_id": "v-1", "ts": 1.8e9, "type": "outsider_vehicle", "plate": "浙C12345", "confidence": 0.9}
    row = _ok(f"{P}/gate-a/st-01/events/vehicle", json.dumps(vehicle).encode())
    assert (row.kind, row.seq, row.event_id, row.detail) == ("vehicle", 9, "v-1", "outsider_vehicle")
    assert "浙C12345" not in json.dumps([getattr(row, f) for f in row.__slots__], default=str)


def _envelope(**over: object) -> dict[str, object]:
    body: dict[str, object] = {"schema": 1, "msg_id": "a" * 32, "station_id": "st-01", "site": "gate-a", "seq": 5, "session": 2}
    body["ts"] = 1.8e9
    body["event"] = {"event_id": "ev-1", "ts": 1.8e9, "decision": "pass", "temperature_c": 36.5}
    body.update(over)
    return body


INFINITE_TS = json.dumps(_envelope(ts=None, event={"event_id": "ev-1", "ts": 5})).encode().replace(b'"ts": 5', b'"ts": 1e999')
HOSTILE = [
    (f"{P}/gate-a/st-01/events/screening", b"\xff\xfe", "not_utf8"),
    (f"{P}/gate-a/st-01/events/screening", b"{", "not_json"),
    (f"{P}/gate-a/st-01/events/screening", b"[1, 2]", "not_object"),
    (f"{P}/gate-a/st-01/events/screening", b"9" * 5000, "not_json"),
    (f"{P}/gate-a/st-01/events/screening", b"[" * 100000, "too_large"),
    (f"{P}/gate-a/st-01/events/screening", b"[" * 30000 + b"]" * 30000, "not_json"),
    (f"{P}/gate-a/st-01/events/screening", json.dumps(_envelope(msg_id=None)).encode(), "bad_msg_id"),
    (f"{P}/gate-a/st-01/events/screening", json.dumps(_envelope(msg_id="x y")).encode(), "bad_msg_id"),
    (f"{P}/gate-a/st-01/events/screening", json.dumps(_envelope(station_id="st-02")).encode(), "sender_mismatch"),
    (f"{P}/gate-a/st-01/events/screening", json.dumps(_envelope(seq=-1)).encode(), "bad_seq"),
    (f"{P}/gate-a/st-01/events/screening", json.dumps(_envelope(seq=True)).encode(), "bad_seq"),
    (f"{P}/gate-a/st-01/events/screening", json.dumps(_envelope(event="x")).encode(), "no_event"),
    (f"{P}/gate-a/st-01/events/screening", json.dumps(_envelope(event={"event_id": "ev-1", "ts": "now"}, ts=None)).encode(), "bad_ts"),
    (
        f"{P}/gate-a/st-01/events/screening",
        json.dumps(_envelope(ts=None, event={"event_id": "ev-1", "ts": 5})).encode().replace(b'"ts": 5', b'"ts": 1e999'),
        "bad_ts",
    ),
    (f"{P}/gate-a/st-01/events/screening", json.dumps(_envelope(event={"event_id": "<script>", "ts": 1.8e9})).encode(), "bad_event_id"),
    (f"{P}/gate-a/st-01/events/audit", json.dumps(_envelope(ts="yesterday")).encode(), "bad_ts"),
    (f"{P}/gate-a/st-01/events/vehicle", json.dumps(_envelope(vehicle=[1])).encode(), "no_vehicle"),
    (f"{P}/gate-a/st-01/events/telemetry", json.dumps(_envelope()).encode(), "unknown_kind"),
    (f"{P}/gate-a/st-01/events/screening/extra", json.dumps(_envelope()).encode(), "bad_topic"),
    (f"{P}/gate a/st-01/events/screening", json.dumps(_envelope()).encode(), "bad_topic"),
    (f"{P}/gate-a/{'x' * 65}/events/screening", json.dumps(_envelope()).encode(), "bad_topic"),
    ("other/v1/gate-a/st-01/events/screening", json.dumps(_envelope()).encode(), "not_ours"),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), HOSTILE, ids=[h[2] + str(i) for i, h in enumerate(HOSTILE)])
def test_hostile_messages_get_a_reason(topic: str, payload: bytes, reason: str) -> None:
    assert parse_message(P, topic, payload) == Rejected(reason)


def test_strings_are_cleaned_and_unknown_values_are_none() -> None:
    event = {"event_id": "ev-1", "ts": 1.8e9, "decision": "open_sesame", "reason": "a\u202eb\x00c" + "x" * 500}
    event |= {"temperature_c": float("1e308"), "code_colour": "purple", "alarm": "yes"}
    row = _ok(f"{P}/gate-a/st-01/events/screening", json.dumps(_envelope(event=event)).encode())
    assert row.decision is None and row.temperature_c is None and row.code_colour is None and row.alarm is False
    assert row.reason is not None and "\x00" not in row.reason and "\u202e" not in row.reason and len(row.reason) <= 160


def test_non_bytes_and_non_str_inputs_are_verdicts() -> None:
    assert parse_message(P, None, b"{}") == Rejected("bad_input")
    assert parse_message(P, "t", "text") == Rejected("bad_input")


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from(["screening", "alarm", "vehicle", "audit", "x"]),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=6),
        max_leaves=20,
    ),
)
def test_any_json_body_gives_a_row_or_a_verdict(kind: str, junk: object) -> None:
    for body in (junk, _envelope(event=junk), _envelope(vehicle=junk), _envelope(seq=junk, session=junk, ts=junk, kind=junk)):
        try:
            payload = json.dumps(body).encode()
        except ValueError:
            continue
        verdict = parse_message(P, f"{P}/gate-a/st-01/events/{kind}", payload)
        assert isinstance(verdict, EventRow | Rejected)
        assert not (isinstance(verdict, Rejected) and verdict.reason.startswith("parser_")), verdict


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.binary(max_size=300))
def test_any_topic_and_bytes_give_a_verdict(topic: str, payload: bytes) -> None:
    assert isinstance(parse_message(P, topic, payload), EventRow | Rejected)


def test_shared_subscription_filter() -> None:
    assert events_filter("checkpoint/v1/", "centre") == "$share/centre/checkpoint/v1/+/+/events/#"
    assert events_filter("checkpoint/v1", None) == "checkpoint/v1/+/+/events/#"
