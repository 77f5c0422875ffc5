"""MQTT command bodies (``cmd/<name>``) through the station's own judge-and-dispatch path.

Each case is a command name and the body bytes a broker client could send: signed envelopes (with
the test centre key) whose fields are then mutated, dropped or retyped, extra fields, wrong-typed
objects, huge and deeply nested values, numbers beyond what JSON parsers hold, and non-UTF-8 bytes.
They go through :meth:`station.link.commands.StationLink.handle` with the real parts: a SQLite store
and a replay store in a temp dir, the gate driver on gpiozero's mock pins, the configured-keys
file. The verdict is the reply's ``reason``; the call also fails (an uncaught finding) if the
relay moved for anything but a successful ``open-gate``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from bench.fuzz_targets.base import Target

SITE, STATION = "fuzz-site", "lane-9"
NAMES = ["open-gate", "set-threshold", "resident-plates", "reload-config", "trust-list", "command-keys", "ping", "snapshot"]
FIELDS = ["id", "deadline", "site", "station", "command", "args", "key_id", "by", "sig"]

_rig: dict[str, Any] = {}


def _setup() -> None:
    from drivers.gate.gpio_gate import GpioGate
    from drivers.publish.mqtt import MqttPublisher
    from station.link.command_auth import (
        CommandKeys,
        CommandVerifier,
        ReplayGuard,
        new_signing_key,
        public_pem,
    )
    from station.link.commands import COMMAND_IDS_FILE, StationLink
    from station.link.handlers import CommandHandlers
    from station.store.events import SqliteEventStore

    tmp = Path(tempfile.mkdtemp(prefix="fuzz-commands-"))
    key = new_signing_key()
    keys_file = tmp / "centre-keys.pem"
    keys_file.write_text(public_pem(key.public_key()))
    store = SqliteEventStore(tmp / "events.db", station_id=STATION, site=SITE)
    store.begin_session()
    gate = GpioGate(17, 27, 22, 23, 24, pin_factory="mock", open_s=0.01)
    keys = CommandKeys(keys_file, tmp / "data")
    replay = ReplayGuard(tmp / "data" / COMMAND_IDS_FILE)
    handlers = CommandHandlers(
        store=store,
        gate=gate,
        monotonic=time.monotonic,
        config_path=None,
        data_dir=tmp / "data",
        snapshot=lambda: {"lane_state": "idle"},
        command_keys=keys,
    )
    # Never started: handle() needs no broker; the publisher only answers intake counters.
    publisher = MqttPublisher("mqtt://127.0.0.1:9", "fuzz", f"checkpoint/v1/{SITE}/{STATION}/status", b"offline", b"online")
    link = StationLink(
        publisher,
        f"checkpoint/v1/{SITE}/{STATION}",
        {"station_id": STATION, "site": SITE},
        {},
        dict,
        handlers,
        verifier=CommandVerifier(keys, replay, site=SITE, station=STATION),
    )
    _rig.update(tmp=tmp, key=key, other_key=new_signing_key(), store=store, gate=gate, replay=replay, link=link, accepted=deque(maxlen=64))


def _teardown() -> None:
    for name in ("gate", "store", "replay"):
        if name in _rig:
            _rig[name].close()
    if "tmp" in _rig:
        shutil.rmtree(_rig["tmp"], ignore_errors=True)
    _rig.clear()


JSON_SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.sampled_from(["", "open-gate", SITE, STATION, "0" * 16, "AAAA", "ʘ" * 70])
)
JSON = st.recursive(
    JSON_SCALAR, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=8
)
ARGS = {  # plausible arguments per command, sometimes wrong
    "set-threshold": st.fixed_dictionaries({"fever_threshold_c": st.floats(30, 45) | JSON}),
    "resident-plates": st.fixed_dictionaries({"plates": st.lists(st.sampled_from(["浙A12345", "皖K66666", "bad!", 7]), max_size=4) | JSON}),
    "command-keys": st.fixed_dictionaries(
        {
            "version": st.integers(-2, 5) | JSON,
            "keys": st.lists(st.sampled_from(["-----BEGIN PUBLIC KEY-----\nAA\n-----END PUBLIC KEY-----", "x"]), max_size=3) | JSON,
        }
    ),
    "trust-list": st.fixed_dictionaries({"version": st.integers(0, 3), "document": JSON}),
}
OTHER_ARGS = st.dictionaries(st.text(max_size=8), JSON, max_size=3)
NAME = st.sampled_from(NAMES) | st.sampled_from(NAMES) | st.sampled_from(NAMES) | st.text(min_size=1, max_size=20)


@st.composite
def command_case(draw: Any) -> tuple[str, bytes]:
    from station.link.command_auth import sign_command

    name = draw(NAME)
    how = draw(
        st.sampled_from(
            [
                "signed",
                "mutated",
                "mutated",
                "dropped",
                "extra",
                "retyped",
                "object",
                "bytes",
                "nested",
                "bigint",
                "resigned-other",
                "other-key",
                "misaddressed",
                "replay",
            ]
        )
    )
    pick: int = draw(st.integers(0, 63))  # drawn every time: the draws must not depend on what was sent before
    if how == "replay" and _rig["accepted"]:  # a body the station already carried out, sent again
        accepted: list[tuple[str, bytes]] = list(_rig["accepted"])
        return accepted[pick % len(accepted)]
    signed_for = draw(st.sampled_from(NAMES)) if how == "resigned-other" else name
    args = dict(draw(ARGS.get(signed_for, OTHER_ARGS)))
    site, station = draw(st.sampled_from([(SITE, "lane-8"), ("other-site", STATION)])) if how == "misaddressed" else (SITE, STATION)
    signer = {
        "site": site,
        "station": station,
        "command": signed_for,
        "by": draw(st.sampled_from(["ops", "Li Wei", "x" * 64])),
        "ttl_s": draw(st.sampled_from([5.0, 30.0, 59.0, 120.0, -1.0])),
    }
    try:
        body: Any = sign_command(_rig["other_key" if how == "other-key" else "key"], args=args, **signer)
    except ValueError:  # NaN in the arguments: the centre's tool cannot sign that; send it under another signature
        body = dict(sign_command(_rig["key"], args={}, **signer), args=args)
    if how == "mutated":
        body[draw(st.sampled_from(FIELDS))] = draw(JSON)
    elif how == "dropped":
        del body[draw(st.sampled_from(FIELDS))]
    elif how == "extra":
        body[draw(st.text(min_size=1, max_size=10))] = draw(JSON)
    elif how == "retyped":
        field = draw(st.sampled_from(FIELDS))
        body[field] = draw(st.sampled_from([[body[field]], {"v": body[field]}, str(body[field]), None, 1e308]))
    elif how == "object":
        body = draw(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), JSON, max_size=10) | JSON)
    elif how == "bytes":
        return name, draw(st.binary(max_size=200) | st.sampled_from([b"\xff\xfe{}", b'{"id": "\xc3\x28"}', b""]))
    elif how == "nested":
        depth = draw(st.integers(10, 50_000))
        return name, b'{"args": ' + b"[" * depth + b"]" * depth + b"}"
    elif how == "bigint":
        return name, b'{"deadline": 1' + b"9" * draw(st.integers(10, 20_000)) + b', "sig": "x"}'
    try:
        return name, json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return name, repr(body).encode("utf-8", "surrogatepass")


def _relay_ons() -> int:
    return sum(1 for _, out, value in _rig["gate"].history() if out == "relay" and value is True)


def _call(case: tuple[str, bytes]) -> str:
    name, payload = case
    before = _relay_ons()
    reply = _rig["link"].handle(name, payload)
    reason = str(reply["reason"])
    if _relay_ons() != before and not (name == "open-gate" and reason == "ok"):
        raise AssertionError(f"the relay moved for {name!r} with reason {reason!r}")
    if reply["ok"] != (reason == "ok"):
        raise AssertionError(f"ok={reply['ok']} but reason={reason!r}")
    if reason == "ok" and name not in ("ping", "snapshot"):
        _rig["accepted"].append(case)
    return reason


LOOKUP_FIELDS = ["id", "ok", "result", "station", "site", "token_sha256", "key_id", "by", "sig"]
_lookup: dict[str, Any] = {}


def _lookup_setup() -> None:
    from station.codes.online import OnlineVerifier
    from station.link.command_auth import CommandKeys, new_signing_key, public_pem

    tmp = Path(tempfile.mkdtemp(prefix="fuzz-lookup-"))
    key = new_signing_key()
    (tmp / "keys.pem").write_text(public_pem(key.public_key()))
    verifier = OnlineVerifier(
        f"checkpoint/v1/{SITE}/{STATION}", identity={"station_id": STATION, "site": SITE}, keys=CommandKeys(tmp / "keys.pem", None)
    )
    _lookup.update(tmp=tmp, key=key, other_key=new_signing_key(), verifier=verifier)


def _lookup_teardown() -> None:
    if "tmp" in _lookup:
        shutil.rmtree(_lookup["tmp"], ignore_errors=True)
    _lookup.clear()


RESULT = st.fixed_dictionaries(
    {"found": st.booleans() | JSON, "colour": st.sampled_from(["green", "yellow", "red"]) | JSON},
    optional={"expires": st.floats() | JSON, "issuer": JSON},
)


@st.composite
def lookup_case(draw: Any) -> tuple[str, str, Any]:
    """(request id, token hash, answer as parsed JSON) as the verifier's judge receives it."""
    from station.link.command_auth import sign_lookup_answer

    corr, token_hash = "r" * 32, "ab" * 32
    how = draw(st.sampled_from(["signed", "mutated", "dropped", "other-key", "other-request", "unsigned", "object"]))
    fields: dict[str, Any] = {
        "request_id": "other" if how == "other-request" else corr,
        "station": STATION,
        "site": SITE,
        "token_sha256": token_hash,
    }
    result = draw(RESULT)
    try:
        answer: Any = sign_lookup_answer(
            _lookup["other_key" if how == "other-key" else "key"], result=result, ok=draw(st.booleans() | st.just(True)), **fields
        )
    except ValueError:  # NaN in the result cannot be signed: it goes out under a signature of something else
        answer = dict(sign_lookup_answer(_lookup["key"], result={}, **fields), result=result)
    if how == "mutated":
        answer[draw(st.sampled_from(LOOKUP_FIELDS))] = draw(JSON)
    elif how == "dropped":
        del answer[draw(st.sampled_from(LOOKUP_FIELDS))]
    elif how == "unsigned":
        answer = {"id": corr, "ok": True, "result": result}
    elif how == "object":
        answer = draw(JSON)
    return corr, token_hash, answer


def _lookup_call(case: tuple[str, str, Any]) -> str:
    from station.domain.model import CodeStatus

    corr, token_hash, answer = case
    msg = answer if isinstance(answer, dict) else {"not": answer}  # _on_result hands over objects only
    verdict = _lookup["verifier"]._judge(msg, time.time(), 1.0, corr, token_hash)
    if verdict.status is CodeStatus.VALID and (not isinstance(answer, dict) or answer.get("key_id") is None):
        raise AssertionError("a valid verdict from an answer without a key")
    return f"{verdict.status.value}:{verdict.reason}"


TARGETS = [
    Target(
        "mqtt-commands",
        "every cmd/<name> body (signed, mutated, retyped, nested, non-UTF-8) through "
        "StationLink.handle with a real store, replay store and mock-pin gate",
        command_case,
        _call,
        setup=_setup,
        teardown=_teardown,
        tags=("mqtt",),
    ),
    Target(
        "lookup-answers",
        "lookup/code/result answers (signed, mutated, other key or request, unsigned, any JSON) "
        "through OnlineVerifier's judge: only a centre-signed answer to this request decides a colour",
        lookup_case,
        _lookup_call,
        setup=_lookup_setup,
        teardown=_lookup_teardown,
        tags=("mqtt", "codes"),
    ),
]
