"""The ``resend`` handler is total over hostile ``args`` and re-queues exactly the kept messages in the range it accepted.

Structure-aware Hypothesis properties calling ``CommandHandlers.resend`` directly (the signed link is covered over a
real broker in tests/test_resend_command.py) on a real SQLite store holding numbered records: any ``args`` gets a
result or a :class:`CommandError` with a reason; an accepted range is 1 <= first <= last, at most ``MAX_RANGE``
numbers, and the outbox afterwards holds the messages of that range and nothing else; the rate limit refuses the
call past ``RESEND_BURST`` a minute and lets calls through again once the minute has passed.
"""

from __future__ import annotations

import math
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from station.link.handlers import RESEND_BURST, CommandError, CommandHandlers
from station.ops.ratelimit import RateLimiter
from station.store.events import SqliteEventStore
from station.store.outbox import PRIORITY_RESEND
from station.store.resend import MAX_RANGE
from tests.support.events import make_event

RECORDS = 12  # screening events, seq 1..12; event 4 is an alarm (two messages under one seq)
PROPS = settings(max_examples=200, deadline=None)


class Station:
    """A real store with numbered records and a handler whose rate limit never gets in the way."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.store = SqliteEventStore(tmp / "events.db", station_id="st-01", site="gate-a")
        self.store.begin_session()
        for i in range(RECORDS):
            self.store.record(make_event(i, alarm=i == 3))
        self.store.record_vehicle({"vehicle_id": "veh-1", "ts": time.time(), "type": "outsider_vehicle", "plate": "浙C12345"})
        self.handlers = CommandHandlers(
            store=self.store,
            gate=None,
            monotonic=time.monotonic,
            config_path=None,
            data_dir=tmp / "data",
            snapshot=lambda: {},
        )
        self.kept = self._kept()
        assert sorted({seq for seq, _m in self.kept}) == list(range(1, RECORDS + 2)), "seq 1..13 kept"
        assert len(self.kept) == RECORDS + 2, "the alarm's second message kept as well"

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.tmp / "events.db") as conn:
            return conn.execute(sql).fetchall()

    def _kept(self) -> list[tuple[int, str]]:
        return sorted(self._query("SELECT seq, msg_id FROM seq_messages"))

    def outbox(self) -> dict[str, int]:
        """Return the pending rows as msg_id -> priority."""
        return dict(self._query("SELECT msg_id, priority FROM outbox"))

    def reset(self) -> None:
        """Empty the outbox as the pump does on PUBACK, and give the handler an unbounded rate limit."""
        ids = [r[0] for r in self._query("SELECT id FROM outbox")]
        self.store.outbox_ack_many(ids)
        assert self.outbox() == {}
        self.handlers.resend_limit = RateLimiter(10**9, 60.0)

    def close(self) -> None:
        self.store.close()


@pytest.fixture(scope="module")
def station() -> Iterator[Station]:
    # Module scope: one store for every example (a tmp_path per example would cost a store build each).
    with tempfile.TemporaryDirectory(prefix="resend-props-") as tmp:
        s = Station(Path(tmp))
        yield s
        s.close()


# -------------------------------------------------------------------------------------------- strategies

_near_bounds = st.sampled_from([2**31, 2**32, 2**53, 2**53 + 1, 2**62, 2**63, 2**64]).flatmap(
    lambda b: st.integers(b - MAX_RANGE - 2, b + 2)
)
_ints = st.one_of(
    st.integers(1, RECORDS + 4),  # the stored records and just past them
    st.integers(1, MAX_RANGE + 20),
    st.just(0),
    st.integers(max_value=-1),
    st.integers(-(2**70), 2**70),
    _near_bounds,
)
_scalars = st.one_of(
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1.0, 2.0, 5.0, float("nan"), float("inf"), -float("inf"), -0.0]),
    st.integers(0, 10**20).map(str),
    st.sampled_from(["", "1", " 1", "1e3", "0x10", "NaN", "٣"]),
    st.none(),
    st.text(max_size=8),
)
_junk = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6
)
_value = st.one_of(_ints, _ints, _ints, _scalars, _junk)
_MISSING = object()


@st.composite
def _args(draw: st.DrawFn) -> dict[str, Any]:
    """A dict with first_seq/last_seq/session each drawn from numbers and junk, or absent, plus unknown keys."""
    args: dict[str, Any] = draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k not in _KEYS), _junk, max_size=2))
    first = draw(st.one_of(st.just(_MISSING), _value))
    if draw(st.integers(0, 2)) and isinstance(first, int) and not isinstance(first, bool):
        # A range of a few numbers, or near the size limit either side of it.
        last = first + draw(st.one_of(st.integers(-2, 30), st.integers(-2, 30), st.integers(MAX_RANGE - 3, MAX_RANGE + 2)))
    else:
        last = draw(st.one_of(st.just(_MISSING), _value))
    session = draw(st.one_of(st.just(_MISSING), st.none(), st.integers(), st.just(_MISSING), st.none(), st.integers(), _scalars, _junk))
    for key, value in zip(_KEYS, (first, last, session), strict=True):
        if value is not _MISSING:
            args[key] = value
    return args


_KEYS = ("first_seq", "last_seq", "session")
_valid = st.integers(1, RECORDS + 3).flatmap(lambda first: st.tuples(st.just(first), st.integers(first, first + 40)))
_not_a_dict = st.one_of(st.lists(_scalars, max_size=3), st.text(max_size=5), st.none(), st.integers(), st.floats(), _junk)


@st.composite
def _request(draw: st.DrawFn) -> dict[str, Any]:
    """A request whose args are mostly a structured dict, sometimes a valid range, sometimes not a dict or absent."""
    kind = draw(st.sampled_from(["args"] * 6 + ["valid"] * 2 + ["not a dict", "absent"]))
    if kind == "args":
        return {"args": draw(_args())}
    if kind == "valid":
        first, last = draw(_valid)
        return {"args": {"first_seq": first, "last_seq": last, "session": draw(st.none() | st.integers())}}
    if kind == "not a dict":
        return {"args": draw(_not_a_dict)}
    return {}


# -------------------------------------------------------------------------------------------- properties


def _is_seq(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@pytest.mark.slow  # about 1 s: 200 examples, some re-queuing 5000 numbers in 25 write transactions
@PROPS
@given(request=_request())
def test_any_args_get_a_result_or_a_refusal_and_a_result_requeues_exactly_its_range(station: Station, request: dict[str, Any]) -> None:
    station.reset()
    try:
        result = station.handlers.resend(request)
    except CommandError as exc:
        event(f"refused: {str(exc)[:30]}")
        assert str(exc).strip(), request
        assert station.outbox() == {}, "a refused resend queued nothing"
        return
    assert isinstance(result, dict)
    first, last = result["first_seq"], result["last_seq"]
    event(f"accepted, {'some' if result['requeued'] else 'none'} re-queued, {'big' if last - first >= 1000 else 'small'} range")
    args = request["args"]
    assert (first, last) == (args["first_seq"], args["last_seq"]), "the range answered is the range asked"
    assert _is_seq(first) and _is_seq(last) and first <= last and last - first + 1 <= MAX_RANGE
    assert result["session"] == args.get("session")
    in_range = {m for seq, m in station.kept if first <= seq <= last}
    seqs = {seq for seq, _m in station.kept if first <= seq <= last}
    pending = station.outbox()
    assert set(pending) == in_range, "exactly the kept messages of the range, nothing outside it"
    assert set(pending.values()) <= {PRIORITY_RESEND}
    assert (result["requeued"], result["already_pending"], result["no_room"]) == (len(in_range), 0, 0)
    assert (result["seqs_found"], result["not_found"]) == (len(seqs), last - first + 1 - len(seqs))
    assert station._kept() == station.kept, "the kept messages themselves are untouched"


@PROPS
@given(first=st.integers(1, RECORDS + 2), size=st.integers(1, RECORDS + 2), again=st.booleans())
def test_asking_twice_before_delivery_queues_nothing_twice(station: Station, first: int, size: int, again: bool) -> None:
    station.reset()
    last = first + size - 1
    once = station.handlers.resend({"args": {"first_seq": first, "last_seq": last}})
    before = station.outbox()
    twice = station.handlers.resend({"args": {"first_seq": first, "last_seq": last}}) if again else once
    assert station.outbox() == before
    if again:
        assert (twice["requeued"], twice["already_pending"]) == (0, once["requeued"])


def test_the_rate_limit_refuses_past_the_burst_within_a_minute_and_lets_through_after(station: Station) -> None:
    station.reset()
    clock = [1000.0]
    handlers = CommandHandlers(
        store=station.store, gate=None, monotonic=lambda: clock[0], config_path=None, data_dir=station.tmp / "data", snapshot=lambda: {}
    )
    ok = {"args": {"first_seq": 1, "last_seq": 2}}
    for i in range(RESEND_BURST):  # spread over 53 s: all within one minute
        assert handlers.resend(ok)["first_seq"] == 1, i
        clock[0] += 59.0 / RESEND_BURST
    for _ in range(3):
        with pytest.raises(CommandError, match=f"at most {RESEND_BURST} resend commands a minute"):
            handlers.resend(ok)
    # A refused hostile call does not spend the budget: validation comes before the limiter.
    with pytest.raises(CommandError, match="whole numbers"):
        handlers.resend({"args": {"first_seq": math.nan, "last_seq": 2}})
    clock[0] = 1060.0  # the oldest call (at 1000) has left the window, the next (at 1005.9) has not: one more fits
    assert handlers.resend(ok)["last_seq"] == 2
    with pytest.raises(CommandError, match="a minute"):
        handlers.resend(ok)
    assert handlers.resend_limit.refused_total() == 4


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ({"first_seq": 2**62 - MAX_RANGE + 1, "last_seq": 2**62}, None),  # the largest accepted numbers: nothing stored there
        ({"first_seq": 2**62, "last_seq": 2**62 + 1}, "whole numbers"),
        ({"first_seq": 2**63, "last_seq": 2**63}, "whole numbers"),
        ({"first_seq": 1, "last_seq": MAX_RANGE}, None),
        ({"first_seq": 1, "last_seq": MAX_RANGE + 1}, f"1 to {MAX_RANGE}"),
        ({"first_seq": 1, "last_seq": 1, "session": 2**64}, None),
        ({"first_seq": 1, "last_seq": 1, "session": 1.0}, "session"),
        ({"first_seq": 1.0, "last_seq": 1}, "whole numbers"),
        ({"first_seq": False, "last_seq": True}, "whole numbers"),
    ],
)
def test_edges(station: Station, args: dict[str, Any], why: str | None) -> None:
    station.reset()
    if why is None:
        result = station.handlers.resend({"args": args})
        assert result["requeued"] == sum(1 for seq, _m in station.kept if args["first_seq"] <= seq <= args["last_seq"])
    else:
        with pytest.raises(CommandError, match=why):
            station.handlers.resend({"args": args})
