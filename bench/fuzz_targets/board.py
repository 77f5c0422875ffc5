"""Board input: (topic, payload) pairs a rogue station could publish, through the board's ingest.

Topics: the board's prefix with valid and hostile site/station segments (markup, spaces, 65+
characters, empty, non-ASCII) and every kind the board reads (``status``, ``state/<component>``,
``events/screening``, ``events/alarm``, ``snapshot``) plus ones it ignores. Payloads: JSON objects
with every known field of that kind, each value either a good one or a wrong one (string for a
number, NaN, ±inf, 10**40, bools, lists, objects, markup, long strings), unknown keys, and raw
bytes (non-JSON, non-UTF-8, deep nesting, non-objects). The call is
:meth:`station.board.state.BoardState.ingest` on a real (throw-away) SQLite history; its verdict is
``accepted`` or ``dropped:<reason>``. Every 200th case the board's view is built and checked: every
total a finite number and every station key a valid segment pair — else the case counts as a finding.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from bench.fuzz_targets.base import Target

P = "checkpoint/v1"
XSS = ['<img src=x onerror="window.__pwned=1">', "<script>alert(1)</script>", "\u202e\x00\x1b[2J", "'; DROP TABLE events; --"]
FIELDS: dict[str, dict[str, Any]] = {
    "status": {"state": st.sampled_from(["online", "offline", "stopped"]), "session": st.integers(0, 100), "version": st.just("0.1.0")},
    "state/outbox": {
        "pending": st.integers(0, 10**6),
        "alarms_pending": st.integers(0, 9),
        "oldest_age_s": st.integers(0, 99),
        "bytes": st.integers(0, 10**9),
        "dropped": st.integers(0, 9),
        "bounds_alarm": st.none(),
        "mqtt": st.sampled_from(["connected", "reconnecting", "auth_failed"]),
    },
    "state/screening": {
        "count_total": st.integers(0, 10**6),
        "count_today": st.integers(0, 10**4),
        "last_event_id": st.uuids().map(str),
        "last_decision": st.sampled_from(["pass", "deny_fever", "retry"]),
        "last_temperature_c": st.floats(35.0, 40.0),
        "alarm": st.booleans(),
        "ts": st.floats(1.7e9, 1.9e9),
    },
    "state/thermal": {"state": st.sampled_from(["connected", "reconnecting", "failed"]), "port": st.just("/dev/ttyUSB0")},
    "snapshot": {
        "jpeg_b64": st.sampled_from(["/9j/4AAQ", "R0lGODlh", "!!!"]),
        "ts": st.floats(1.7e9, 1.9e9),
        "blur": st.sampled_from(["faces", "off", "all"]),
        "faces_blurred": st.integers(0, 5),
        "width": st.integers(1, 640),
        "height": st.integers(1, 480),
    },
}
EVENT = {
    "event_id": st.uuids().map(str),
    "ts": st.floats(time.time() - 3600, time.time()),
    "decision": st.sampled_from(["pass", "deny_fever", "deny_code", "retry", "manual_check"]),
    "temperature_c": st.floats(35.0, 40.0),
    "alarm": st.booleans(),
    "reason": st.just("ok"),
}

_rig: dict[str, Any] = {}


SEGMENT_ALPHABET = "abcXYZ019_-"
ODD_SEGMENTS = ["", "a b", "<b>", "x" * 65, "ünï", "a.b", "+", "#", "\x00", "s1\u202e"]
KINDS = [
    "status",
    "state/outbox",
    "state/screening",
    "state/thermal",
    "state/camera",
    "events/screening",
    "events/alarm",
    "snapshot",
    "stats",
    "cmd/open-gate",
    "events/vehicle",
    "state/",
    "nonsense/x",
]
RAW = [
    b"\xff\xfe\xfd",
    b"[" * 3000,
    b'{"a":' + b"9" * 5000 + b"}",
    b"null",
    b'"online"',
    b"[1,2]",
    b"",
    b"{" * 50,
    b'{"pending": NaN}',
    b'{"state": "online", "session": 1e999}',
]


def _wrong() -> st.SearchStrategy[Any]:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**40), 10**40),
        st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 0.5]),
        st.text(max_size=20),
        st.sampled_from(XSS),
        st.integers(10, 5000).map(lambda n: "A" * n),
    )
    return st.one_of(leaf, st.lists(leaf, max_size=3), st.dictionaries(st.sampled_from(["a", "state", "0"]), leaf, max_size=2))


WRONG = _wrong()


@st.composite
def _object(draw: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """Every known field good, wrong or absent, plus unknown keys."""
    body: dict[str, Any] = {}
    for key, good in fields.items():
        choice = draw(st.integers(0, 3))
        if choice == 0:
            continue
        body[key] = draw(WRONG) if choice == 3 else draw(good)
    for key in draw(st.lists(st.sampled_from(["evil", "schema", "__proto__", "x" * 100]), max_size=2)):
        body[key] = draw(WRONG)
    return body


@st.composite
def _segment(draw: Any) -> str:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return str(draw(st.sampled_from(["s1", "lane-1", "lane-2", "gate_3"])))
    if choice == 1:
        return str(draw(st.sampled_from(ODD_SEGMENTS)))
    return str(draw(st.text(alphabet=SEGMENT_ALPHABET, min_size=1, max_size=8)))


@st.composite
def _body(draw: Any, kind: str) -> Any:
    if kind in ("events/screening", "events/alarm"):
        if draw(st.integers(0, 4)) == 0:
            return draw(
                _object(
                    {
                        "kind": st.just("outbox_overflow"),
                        "msg_id": st.uuids().map(str),
                        "dropped": st.integers(0, 99),
                        "ts": st.floats(1.7e9, 1.9e9),
                    }
                )
            )
        event = draw(_object(EVENT)) if draw(st.integers(0, 5)) else draw(WRONG)
        return {"event": event, "ts": draw(st.one_of(st.floats(1.7e9, 1.9e9), WRONG))}
    return draw(_object(FIELDS.get(kind, FIELDS["state/thermal"])))


@st.composite
def _case_one(draw: Any) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(KINDS))
    topic = f"{P}/{draw(_segment())}/{draw(_segment())}/{kind}"
    if draw(st.integers(0, 5)) == 0:
        payload = draw(st.one_of(st.binary(max_size=64), st.sampled_from(RAW)))
    else:
        payload = json.dumps(draw(_body(kind)), allow_nan=True).encode("utf-8", "surrogatepass")
    return topic, payload


def _case() -> st.SearchStrategy[tuple[str, bytes]]:
    return _case_one()


def _setup() -> None:
    from station.board.history import BoardHistory
    from station.board.state import BoardState

    tmp = Path(tempfile.mkdtemp(prefix="fuzz-board-"))
    history = BoardHistory(tmp / "board.sqlite3", durable=False)
    _rig.update(tmp=tmp, history=history, state=BoardState(history, P, max_stations=500), n=0)


def _teardown() -> None:
    _rig["history"].close()
    shutil.rmtree(_rig["tmp"], ignore_errors=True)
    _rig.clear()


def _check_view() -> None:
    from station.board.schema import segment

    view = _rig["state"].view()
    for name, total in view["totals"].items():
        if not (isinstance(total, int) and not isinstance(total, bool) and total >= 0):
            raise AssertionError(f"total {name} is {total!r}")
    for row in view["stations"]:
        if not (segment(row["site"]) and segment(row["station"])):
            raise AssertionError(f"station key {row['key']!r}")
        pending = (row["backlog"] or {}).get("pending")
        if pending is not None and not (isinstance(pending, int) and pending >= 0):
            raise AssertionError(f"pending {pending!r}")
        temp = (row["last"] or {}).get("temperature_c")
        if temp is not None and not (isinstance(temp, float) and math.isfinite(temp)):
            raise AssertionError(f"temperature {temp!r}")
    json.dumps(view, ensure_ascii=False, allow_nan=False).encode("utf-8")  # what the stream sends must encode


def _call(case: tuple[str, bytes]) -> str:
    topic, payload = case
    verdict: str = _rig["state"].ingest(topic, payload)
    _rig["n"] += 1
    if _rig["n"] % 200 == 0:
        _check_view()
    return verdict


TARGETS = [
    Target(
        "board_ingest",
        "station topics and payloads (wrong types in every field) through BoardState.ingest",
        _case,
        _call,
        setup=_setup,
        teardown=_teardown,
        tags=("board",),
    ),
]
