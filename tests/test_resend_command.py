"""The signed ``resend`` command on the real command link (real mosquitto, real SQLite): records numbered in a range go
back into the outbox with their original ``msg_id`` and payload, behind live messages; anything not signed by the
centre key, addressed elsewhere, expired or naming too many numbers is refused and audited.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from station.link.command_auth import SIGNED_COMMANDS
from station.link.handlers import RESEND_BURST
from station.store.outbox import PRIORITY_EVENT, PRIORITY_RESEND
from station.store.resend import MAX_RANGE
from station.store.retention import purge_store
from tests.support.command_rig import Rig
from tests.support.events import make_event

pytestmark = pytest.mark.slow


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def _outbox(rig: Rig) -> dict[str, tuple[str, bytes, int]]:
    """Return the pending record messages (the commands' own audit messages left out)."""
    with sqlite3.connect(rig.tmp / "events.db") as conn:
        rows = conn.execute(
            "SELECT msg_id, topic, payload, priority FROM outbox WHERE topic NOT LIKE '%/events/audit' ORDER BY id"
        ).fetchall()
    return {m: (t, bytes(p), pr) for m, t, p, pr in rows}


def _deliver_everything(rig: Rig) -> None:
    """Acknowledge every pending row, as the pump does on PUBACK (the rows leave the outbox)."""
    with sqlite3.connect(rig.tmp / "events.db") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM outbox")]
    rig.store.outbox_ack_many(ids)


def _resend(rig: Rig, first: int, last: int, **kw: Any) -> dict[str, Any]:
    return rig.call("resend", rig.signed("resend", {"first_seq": first, "last_seq": last, **kw}))


def test_a_signed_resend_requeues_the_records_with_their_original_msg_id_and_payload(rig: Rig) -> None:
    assert "resend" in SIGNED_COMMANDS
    for i in range(5):
        rig.store.record(make_event(i, alarm=i == 2))  # seq 1-5; seq 3 also has its alarm copy
    rig.store.record_vehicle({"vehicle_id": "veh-1", "ts": time.time(), "type": "outsider_vehicle", "plate": "浙C12345"})  # seq 6
    sent = _outbox(rig)
    assert len(sent) == 7
    _deliver_everything(rig)
    assert _outbox(rig) == {}
    answer = _resend(rig, 2, 9, session=rig.store.session)
    assert answer["ok"] is True, answer
    assert answer["result"] | {"session": None} == {
        "first_seq": 2,
        "last_seq": 9,
        "requeued": 6,  # seq 2-6 with the alarm copy of seq 3
        "already_pending": 0,
        "not_found": 3,  # 7-9 were never made
        "no_room": 0,
        "seqs_found": 5,
        "session": None,
    }
    again = _outbox(rig)
    originals = {m: v for m, v in sent.items() if b'"seq":1,' not in v[1]}
    assert {m: (t, p) for m, (t, p, _pr) in again.items()} == {m: (t, p) for m, (t, p, _pr) in originals.items()}
    assert {pr for _t, _p, pr in again.values()} == {PRIORITY_RESEND}
    # Live records go first: the pump takes the outbox by priority.
    rig.store.record(make_event(7))
    order = [r for r in rig.store.outbox_pending(100) if not r.topic.endswith("/audit")]
    assert order[0].priority == PRIORITY_EVENT and b'"seq":7,' in order[0].payload
    assert [r.priority for r in order[1:]] == [PRIORITY_RESEND] * 6
    # Asked again before delivery: nothing twice.
    assert _resend(rig, 2, 6)["result"]["already_pending"] == 6
    assert len(_outbox(rig)) == 7
    audits = rig.store.command_audit()
    assert [(a["command"], a["ok"], a["signer"].split(" (key")[0]) for a in audits[:2]] == [("resend", True, "duty-officer")] * 2


def test_records_removed_by_retention_are_answered_as_not_found(rig: Rig) -> None:
    old = time.time() - 40 * 86400
    for i in range(4):
        rig.store.record(make_event(i, ts=old if i < 3 else None))
    _deliver_everything(rig)
    gone = purge_store(rig.store, events_days=30)
    assert gone.events == 3
    with sqlite3.connect(rig.tmp / "events.db") as conn:  # the kept messages went with their records
        assert conn.execute("SELECT seq FROM seq_messages").fetchall() == [(4,)]
    answer = _resend(rig, 1, 4)
    assert answer["ok"] is True and answer["result"]["not_found"] == 3 and answer["result"]["requeued"] == 1


def test_a_resend_stops_at_half_the_outbox_bound_and_leaves_the_rest_for_later(rig: Rig) -> None:
    from station.store.events import OutboxBounds

    for i in range(10):
        rig.store.record(make_event(i))
    _deliver_everything(rig)
    rig.store.record(make_event(10))  # one live row pending
    rig.store.outbox_bounds = OutboxBounds(max_rows=10, max_bytes=10**9, max_age_s=10**9)
    result = _resend(rig, 1, 10)["result"]
    assert (result["requeued"], result["no_room"]) == (4, 6)  # 1 live + 4 = half of 10 rows
    assert rig.store.outbox_enforce_bounds() == 0  # nothing live was pushed out
    # Over a bound after all (the station offline for long), the re-sent copies go first: the centre can ask again.
    live = [r.msg_id for r in rig.store.outbox_pending(100) if r.priority != PRIORITY_RESEND]
    rig.store.outbox_bounds = OutboxBounds(max_rows=len(live) + 2, max_bytes=10**9, max_age_s=10**9)
    assert rig.store.outbox_enforce_bounds() == 2
    after = rig.store.outbox_pending(100)
    assert set(live) <= {r.msg_id for r in after}, "every live row kept"
    assert [r.priority for r in after].count(PRIORITY_RESEND) == 2


def test_unsigned_misaddressed_expired_or_too_large_resends_are_refused_and_audited(rig: Rig) -> None:
    rig.store.record(make_event(1))
    _deliver_everything(rig)
    args = {"first_seq": 1, "last_seq": 1}
    cases = [
        ({"id": "plain", "args": args}, "unsigned"),
        (rig.signed("resend", args, station="st-99"), "wrong_station"),
        (rig.signed("resend", args, now=time.time() - 120), "expired"),
        (rig.signed("resend", {"first_seq": 1, "last_seq": MAX_RANGE + 1}), "command_error"),
        (rig.signed("resend", {"first_seq": 5, "last_seq": 4}), "command_error"),
        (rig.signed("resend", {"first_seq": True, "last_seq": 4}), "command_error"),
        (rig.signed("resend", {"first_seq": "1", "last_seq": 4}), "command_error"),
    ]
    for request, reason in cases:
        answer = rig.call("resend", request)
        assert answer["ok"] is False and answer["reason"] == reason, (request, answer)
    assert _outbox(rig) == {}, "nothing was queued"
    audits = rig.store.command_audit(limit=20)
    assert [a["ok"] for a in audits if a["command"] == "resend"] == [False] * len(cases)
    # The rate limit: RESEND_BURST a minute, whoever signs them.
    answers = [_resend(rig, 1, 1) for _ in range(RESEND_BURST + 1)]
    assert [a["ok"] for a in answers] == [True] * RESEND_BURST + [False]
    assert "a minute" in answers[-1]["error"]
