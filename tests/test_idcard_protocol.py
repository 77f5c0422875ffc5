"""The SAM frame protocol: golden byte vectors, the total frame parser, and the base-info decoder's privacy."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.idcard.sam_protocol import (
    FIND_CARD,
    PREAMBLE,
    READ_BASE_INFO,
    RESET_SAM,
    SAM_STATUS,
    SELECT_CARD,
    Frame,
    FrameParser,
    Problem,
    command,
    decode_base_info,
    encode_base_info,
    encode_frame,
)
from station.codes.idcard import HASH_CENTRE, IdHasher, mask_id

GOLDEN = json.loads((Path(__file__).parent / "data" / "idcard" / "golden.json").read_text(encoding="utf-8"))
ID_NUMBER = "11010119900307803X"
HASHER = IdHasher(b"centre-key-for-tests-only-32byte", HASH_CENTRE)


def _hex(name: str, group: str = "replies") -> bytes:
    return bytes.fromhex(GOLDEN[group][name])


@pytest.mark.parametrize(
    ("name", "cmd"),
    [
        ("reset_sam", RESET_SAM),
        ("sam_status", SAM_STATUS),
        ("find_card", FIND_CARD),
        ("select_card", SELECT_CARD),
        ("read_base_info", READ_BASE_INFO),
    ],
)
def test_commands_are_the_golden_bytes(name: str, cmd: tuple[int, int]) -> None:
    assert command(cmd) == _hex(name, "commands")
    (frame,) = FrameParser().feed(_hex(name, "commands"))
    assert isinstance(frame, Frame) and frame.command == cmd


@pytest.mark.parametrize(
    ("name", "status", "data_len"),
    [
        ("ok", 0x90, 0),
        ("card_found", 0x9F, 4),
        ("find_failed", 0x80, 0),
        ("select_ok", 0x90, 8),
        ("select_failed", 0x81, 0),
        ("read_failed", 0x41, 0),
        ("sam_selftest_failed", 0x60, 0),
        ("checksum_error", 0x10, 0),
        ("base_info", 0x90, 4 + 256 + 1024),
    ],
)
def test_golden_replies_parse_to_their_status(name: str, status: int, data_len: int) -> None:
    (frame,) = FrameParser().feed(_hex(name))
    assert isinstance(frame, Frame)
    assert (frame.status, len(frame.reply_data)) == (status, data_len)
    assert encode_frame(frame.body) == _hex(name)


@pytest.mark.parametrize("name", ["base_info", "base_info_long_term"])
def test_base_info_keeps_only_hash_mask_and_dates(name: str) -> None:
    (frame,) = FrameParser().feed(_hex(name))
    assert isinstance(frame, Frame)
    facts = decode_base_info(frame.reply_data, HASHER, HASH_CENTRE)
    assert not isinstance(facts, str)
    expected = GOLDEN[f"{name}_expected"]
    assert facts.id_masked == expected["id_masked"]
    assert facts.valid_from.isoformat() == expected["valid_from"]
    assert (facts.valid_to.isoformat() if facts.valid_to else None) == expected["valid_to"]
    # The object holds nothing else: five fields and the district key's reference (None here: no tracer),
    # none of them the number, a name or an address.
    assert set(facts.__slots__) == {"id_hash", "id_masked", "hash_key", "valid_from", "valid_to", "trace_ref", "trace_key"}
    assert (facts.trace_ref, facts.trace_key) == (None, None)
    text = repr(facts) + json.dumps(facts.as_record(), ensure_ascii=False)
    for secret in ("11010119900307803X", "110101194001011234", "张测试", "李测试", "北京市", "测试路", "公安局", "19900307"):
        assert secret not in text


def test_the_hash_is_the_keyed_hmac_of_the_number() -> None:
    import hashlib
    import hmac

    (frame,) = FrameParser().feed(_hex("base_info"))
    assert isinstance(frame, Frame)
    facts = decode_base_info(frame.reply_data, HASHER, HASH_CENTRE)
    assert not isinstance(facts, str)
    want = hmac.new(b"centre-key-for-tests-only-32byte", b"idcard:" + ID_NUMBER.encode(), hashlib.sha256).hexdigest()
    assert facts.id_hash == want
    assert IdHasher(b"another-key-another-key-32bytes!", HASH_CENTRE)(ID_NUMBER) != want


def test_expiry_is_by_calendar_date() -> None:
    data = encode_base_info(
        name="x",
        sex="1",
        nation="01",
        birth="19900101",
        address="x",
        id_number=ID_NUMBER,
        authority="x",
        valid_from="20100101",
        valid_to="20200101",
    )
    facts = decode_base_info(data, HASHER, HASH_CENTRE)
    assert not isinstance(facts, str)
    assert facts.expired(dt.date(2020, 1, 2)) and not facts.expired(dt.date(2020, 1, 1))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short_reply"),
        (b"\x01\x00\x04\x00" + bytes(10), "bad_layout"),
        (b"\x00\x10\x04\x00" + bytes(2000), "bad_layout"),
        (
            encode_base_info(
                name="",
                sex="",
                nation="",
                birth="",
                address="",
                id_number="12345",
                authority="",
                valid_from="20100101",
                valid_to="20200101",
            ),
            "bad_id_number",
        ),
        (
            encode_base_info(
                name="", sex="", nation="", birth="", address="", id_number=ID_NUMBER, authority="", valid_from="2010", valid_to="20200101"
            ),
            "bad_dates",
        ),
        (
            encode_base_info(
                name="",
                sex="",
                nation="",
                birth="",
                address="",
                id_number=ID_NUMBER,
                authority="",
                valid_from="20100101",
                valid_to="20201301",
            ),
            "bad_dates",
        ),
        (b"\x01\x00\x04\x00" + b"\xff\xd8" * 640, "bad_id_number"),
        (
            encode_base_info(
                name="",
                sex="",
                nation="",
                birth="",
                address="",
                id_number="1101011990010112²X",
                authority="",
                valid_from="20100101",
                valid_to="20300101",
            ),
            "bad_id_number",
        ),
        (
            encode_base_info(
                name="",
                sex="",
                nation="",
                birth="",
                address="",
                id_number=ID_NUMBER,
                authority="",
                valid_from="٢٠١٠٠١٠١",
                valid_to="20300101",
            ),
            "bad_dates",
        ),
    ],
)
def test_unreadable_base_info_gives_a_reason(data: bytes, reason: str) -> None:
    assert decode_base_info(data, HASHER, HASH_CENTRE) == reason


def test_mask_keeps_first_and_last_only() -> None:
    assert mask_id(ID_NUMBER) == "1" + "*" * 16 + "X"
    assert mask_id("ab") == "**"


# -- the parser is total ---------------------------------------------------------------------------

# Frame data never holds 0xAA here, so no preamble can appear inside a frame and the expected frames
# are exactly known; arbitrary bytes (0xAA included) are the last property's job.
DATA = st.binary(max_size=300).map(lambda b: b.replace(b"\xaa", b"\xab"))
BODIES = st.tuples(st.integers(0, 0xFF).filter(lambda x: x != 0xAA), st.integers(0, 0xFF).filter(lambda x: x != 0xAA), DATA).map(
    lambda t: bytes((t[0], t[1])) + t[2]
)
GARBAGE = st.binary(max_size=40).map(lambda b: b.replace(b"\xaa", b"\x55"))
CHUNKS = st.lists(st.integers(1, 64), min_size=1, max_size=20)


def _parse(stream: bytes, chunks: list[int]) -> tuple[list[Frame], list[Problem]]:
    parser = FrameParser()
    items = []
    at, i = 0, 0
    while at < len(stream):
        n = chunks[i % len(chunks)]
        items += parser.feed(stream[at : at + n])
        at += n
        i += 1
    items += parser.flush()
    assert parser.pending() == 0
    return [x for x in items if isinstance(x, Frame)], [x for x in items if isinstance(x, Problem)]


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(GARBAGE, BODIES), min_size=1, max_size=6), GARBAGE, CHUNKS)
def test_valid_frames_between_garbage_are_all_found(parts: list[tuple[bytes, bytes]], tail: bytes, chunks: list[int]) -> None:
    stream = b"".join(g + encode_frame(b) for g, b in parts) + tail
    frames, problems = _parse(stream, chunks)
    assert [f.body for f in frames] == [b for _, b in parts]
    assert sum(p.n_bytes for p in problems if p.reason == "garbage") == sum(len(g) for g, _ in parts) + len(tail)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(st.lists(BODIES, min_size=2, max_size=5), st.data(), CHUNKS)
def test_a_damaged_frame_is_reported_and_the_others_survive(bodies: list[bytes], data: st.DataObject, chunks: list[int]) -> None:
    frames_bytes = [encode_frame(b) for b in bodies]
    k = data.draw(st.integers(0, len(bodies) - 1), label="damaged frame")
    frame = bytearray(frames_bytes[k])
    kind = data.draw(st.sampled_from(["flip_body", "flip_checksum", "truncate", "bad_length_low", "bad_length_high", "flip_preamble"]))
    if kind in ("flip_body", "flip_checksum"):
        at = data.draw(st.integers(7, len(frame) - 2)) if kind == "flip_body" else len(frame) - 1
        old = frame[at]
        mask = data.draw(st.integers(1, 0xFF).filter(lambda m: old ^ m != 0xAA))
        frame[at] ^= mask
        want_problem: str | None = "bad_checksum"
    elif kind == "truncate":
        frame = frame[: data.draw(st.integers(len(PREAMBLE), len(frame) - 1))]
        want_problem = "truncated" if k == len(bodies) - 1 else None  # (or a bad checksum when the next frame is swallowed)
    elif kind == "bad_length_low":
        frame[5:7] = (data.draw(st.integers(0, 2))).to_bytes(2, "big")
        want_problem = "bad_length"
    elif kind == "bad_length_high":
        frame[5:7] = (data.draw(st.integers(4097, 0xA9FF))).to_bytes(2, "big")
        want_problem = "bad_length"
    else:
        frame[data.draw(st.integers(0, 4))] ^= 0x01
        want_problem = "garbage"
    frames_bytes[k] = bytes(frame)
    frames, problems = _parse(b"".join(frames_bytes), chunks)
    assert [f.body for f in frames] == [b for i, b in enumerate(bodies) if i != k]
    assert problems, "a damaged frame is always reported"
    if want_problem is not None:
        assert want_problem in {p.reason for p in problems}


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), CHUNKS)
def test_any_bytes_give_frames_or_reasons_never_an_exception(stream: bytes, chunks: list[int]) -> None:
    frames, problems = _parse(stream, chunks)
    for f in frames:
        assert encode_frame(f.body) in stream
    assert all(p.reason in {"garbage", "bad_length", "bad_checksum", "truncated"} and p.n_bytes > 0 for p in problems)


def test_a_frame_repr_never_shows_its_body() -> None:
    (frame,) = FrameParser().feed(_hex("base_info"))
    assert ID_NUMBER.encode("utf-16-le").hex() not in repr(frame) and len(repr(frame)) < 60
