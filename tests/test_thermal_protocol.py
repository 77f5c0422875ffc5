"""GY-MCU90640 byte protocol: golden vectors, command bytes, and the streaming parser's guarantees."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.thermal import gy_protocol as gy
from drivers.thermal.gy_protocol import (
    FRAME_LEN,
    DecodedFrame,
    FrameParser,
    ParsedReply,
    checksum,
    command,
    encode_frame,
    image_to_module_order,
    module_order_to_image,
    parse_command,
)
from drivers.thermal.serial_source import resolve_port
from tests.support.thermal_golden import GOLDEN_1, GOLDEN_3

# ---------------------------------------------------------------------------------------------
# Golden vectors: the three worked examples of design/thermal.md §1.1, written out as hex
# ---------------------------------------------------------------------------------------------

GOLDEN_2_HEX = "5A5A0206" + "6E0E690E5A0E" + "100E" * 764 + "050E" + "8D0E" + "DF9F"  # the manual's words
GOLDEN_2 = bytes.fromhex(GOLDEN_2_HEX)


def _decode_one(data: bytes) -> DecodedFrame:
    items = FrameParser().feed(data)
    assert len(items) == 1 and isinstance(items[0], DecodedFrame)
    return items[0]


@pytest.mark.parametrize(("frame", "checksum_bytes"), [(GOLDEN_1, "14B8"), (GOLDEN_2, "DF9F"), (GOLDEN_3, "6AC4")])
def test_golden_frames_have_the_documented_length_and_checksum(frame: bytes, checksum_bytes: str) -> None:
    assert len(frame) == FRAME_LEN
    assert frame[:4] == bytes.fromhex("5A5A0206")
    assert frame[-2:] == bytes.fromhex(checksum_bytes)
    assert checksum(frame) == int.from_bytes(bytes.fromhex(checksum_bytes), "little")


def test_golden_1_uniform_scene() -> None:
    assert checksum(GOLDEN_1) == 0xB814
    f = _decode_one(GOLDEN_1)
    assert f.pixels_c.shape == (24, 32) and f.pixels_c.dtype == np.float32
    assert np.all(f.pixels_c == np.float32(25.0))
    assert f.die_c == 30.0
    assert f.raw == GOLDEN_1
    assert encode_frame(np.full(768, 2500, dtype=np.int16), 3000) == GOLDEN_1


def test_golden_2_manual_pixel_words() -> None:
    assert checksum(GOLDEN_2) == 0x9FDF
    f = _decode_one(GOLDEN_2)
    # module words 0, 1, 2 are the first three pixels of row 0, which the scene sees mirrored
    assert f.pixels_c[0, 31] == np.float32(36.94)
    assert f.pixels_c[0, 30] == np.float32(36.89)
    assert f.pixels_c[0, 29] == np.float32(36.74)
    assert f.pixels_c[23, 0] == np.float32(35.89)  # word 767: row 23, module column 31
    assert f.die_c == 37.25
    rest = np.ones((24, 32), dtype=bool)
    rest[0, 29:32] = False
    rest[23, 0] = False
    assert np.all(f.pixels_c[rest] == np.float32(36.0))
    words = np.full(768, 3600, dtype=np.int16)
    words[:3] = (3694, 3689, 3674)
    words[767] = 3589
    assert encode_frame(words, 3725) == GOLDEN_2


def test_golden_3_negative_and_hot_pixels_land_mirrored() -> None:
    assert checksum(GOLDEN_3) == 0xC46A
    assert GOLDEN_3[4:6] == bytes.fromhex("DAFD") and GOLDEN_3[804:806] == bytes.fromhex("A00F")
    f = _decode_one(GOLDEN_3)
    # module (row 0, col 0) is the upper-right pixel of the scene
    assert f.pixels_c[0, 31] == np.float32(-5.5)
    assert f.pixels_c[0, 0] == np.float32(22.5)
    # module (row 12, col 16) → scene column 31 - 16 = 15
    assert f.pixels_c[12, 15] == np.float32(40.0)
    assert f.pixels_c[12, 16] == np.float32(22.5)
    assert f.die_c == 26.0
    assert (f.pixels_c == np.float32(22.5)).sum() == 766
    img = np.full((24, 32), 22.5)
    img[0, 31] = -5.5
    img[12, 15] = 40.0
    assert encode_frame(image_to_module_order(img), 2600) == GOLDEN_3


def test_checksum_counts_negative_words_as_twos_complement() -> None:
    words = [0x5A5A, 0x0602, -550] + [2250] * 766 + [4000, 2600]
    assert checksum(words) == 0xC46A
    assert checksum(np.array(words, dtype=np.int64)) == 0xC46A


def test_image_module_order_round_trip_and_mirror() -> None:
    rng = np.random.default_rng(7)
    img = np.round(rng.uniform(-40, 300, (24, 32)), 2)
    words = image_to_module_order(img)
    assert words.dtype == np.int16 and words.shape == (768,)
    for k in (0, 31, 32, 400, 767):
        assert words[k] == round(img[k // 32, 31 - k % 32] * 100)
    back = module_order_to_image(words)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, (np.rint(img * 100).astype(np.float32) / np.float32(100)))


def test_image_to_module_order_rejects_wrong_input() -> None:
    with pytest.raises(ValueError):
        image_to_module_order(np.zeros((32, 24)))
    bad = np.zeros((24, 32))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError):
        image_to_module_order(bad)
    with pytest.raises(ValueError):
        encode_frame(np.zeros(767, dtype=np.int16), 0)


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------

COMMAND_TABLE = [
    (gy.cmd_set_baud(9600), "A51501BB"),
    (gy.cmd_set_baud(115200), "A51502BC"),
    (gy.cmd_set_baud(460800), "A51503BD"),
    (gy.cmd_set_refresh(0.5), "A52500CA"),
    (gy.cmd_set_refresh(1), "A52501CB"),
    (gy.cmd_set_refresh(2), "A52502CC"),
    (gy.cmd_set_refresh(4), "A52503CD"),
    (gy.cmd_set_refresh(8), "A52504CE"),
    (gy.cmd_query_mode(), "A53501DB"),
    (gy.cmd_request_frame(), "A53501DB"),
    (gy.cmd_continuous_mode(), "A53502DC"),
    (gy.cmd_set_emissivity(0.95), "A5455F49"),
    (gy.cmd_set_emissivity(0.98), "A545624C"),
    (gy.cmd_set_emissivity(1.0), "A545644E"),
    (gy.cmd_query_emissivity(), "A55501FB"),
    (gy.cmd_save(), "A565010B"),
]


@pytest.mark.parametrize(("built", "expected"), COMMAND_TABLE, ids=[h for _, h in COMMAND_TABLE])
def test_command_bytes(built: bytes, expected: str) -> None:
    assert built == bytes.fromhex(expected)
    assert parse_command(built) == (built[1], built[2])


def test_command_builder_and_validation() -> None:
    assert command(0x25, 0x04) == bytes.fromhex("A52504CE")
    assert gy.emissivity_reply(0x5F) == bytes.fromhex("5A5A5F13")
    # the vendor SDK's off-by-one refresh command carries a wrong sum byte: not a command
    assert parse_command(bytes.fromhex("A52502CB")) is None
    assert parse_command(bytes.fromhex("A525")) is None
    for bad in (
        lambda: gy.cmd_set_baud(57600),
        lambda: gy.cmd_set_refresh(3),
        lambda: gy.cmd_set_emissivity(1.01),
        lambda: gy.cmd_set_emissivity(0.0),
        lambda: command(0x100, 0),
    ):
        with pytest.raises(ValueError):
            bad()


def test_link_arithmetic() -> None:
    assert gy.frame_time_s(115200) == pytest.approx(0.134, abs=1e-3)
    assert gy.max_frame_rate(115200) == pytest.approx(7.46, abs=0.01)
    assert gy.max_frame_rate(460800) == pytest.approx(29.8, abs=0.1)
    assert gy.max_frame_rate(9600) == pytest.approx(0.62, abs=0.01)


# ---------------------------------------------------------------------------------------------
# Parser: replies, plausibility, resync
# ---------------------------------------------------------------------------------------------


def _frame(seed: int, ta_centi: int = 3000) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_frame(rng.integers(1500, 3800, 768).astype(np.int16), ta_centi)


def test_emissivity_reply_between_frames_and_split_across_chunks() -> None:
    f1, f2 = _frame(1), _frame(2)
    stream = f1 + bytes.fromhex("5A5A5F13") + f2
    p = FrameParser()
    items = []
    for i in range(0, len(stream), 3):
        items += p.feed(stream[i : i + 3])
    assert [type(x) for x in items] == [DecodedFrame, ParsedReply, DecodedFrame]
    reply = items[1]
    assert isinstance(reply, ParsedReply) and reply.kind == "emissivity" and reply.value == 0.95
    assert p.emissivity_replies == 1 and p.frames_ok == 2 and p.resync_bytes == 0 and p.checksum_errors == 0


def test_reply_with_bad_sum_is_discarded() -> None:
    p = FrameParser()
    assert p.feed(bytes.fromhex("5A5A5F14") + _frame(3)) != []
    assert p.emissivity_replies == 0 and p.frames_ok == 1 and p.resync_bytes == 4


def _words(value: int) -> np.ndarray:
    return np.full(768, value, dtype=np.int16)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(encode_frame(_words(0), 3000), id="all-zero"),
        pytest.param(encode_frame(_words(32000), 3000), id="hot-320C"),
        pytest.param(encode_frame(np.where(np.arange(768) % 97 == 0, -0x8000, 2500).astype(np.int16), 3000), id="dead"),
        pytest.param(encode_frame(_words(2500), 13000), id="die-130C"),
        pytest.param(encode_frame(_words(2500), -4500), id="die-minus-45C"),
    ],
)
def test_checksum_valid_but_implausible_frames_are_counted_and_skipped(bad: bytes) -> None:
    good = _frame(4)
    p = FrameParser()
    items = p.feed(bad + good)
    assert len(items) == 1 and items[0].raw == good  # type: ignore[union-attr]
    assert p.implausible_frames == 1 and p.checksum_errors == 0 and p.frames_ok == 1 and p.resync_bytes == 0


def test_compensating_two_byte_error_passes_sum16_but_not_plausibility() -> None:
    words = _words(2500)
    raw = bytearray(encode_frame(words, 3000))
    # +28000 on one pixel, -28000 on another: the 16-bit sum cannot see it
    k1, k2 = 10, 500
    for k, delta in ((k1, 28000), (k2, -28000)):
        off = 4 + 2 * k
        v = int.from_bytes(raw[off : off + 2], "little", signed=True) + delta
        raw[off : off + 2] = v.to_bytes(2, "little", signed=True)
    assert checksum(raw) == int.from_bytes(raw[-2:], "little")
    p = FrameParser()
    assert p.feed(bytes(raw)) == []
    assert p.implausible_frames == 1


def test_checksum_failure_resyncs_one_byte_and_keeps_the_next_frame() -> None:
    f1, f2 = _frame(5), _frame(6)
    short = f1[:700] + f1[701:]  # one byte dropped: the 1544-byte window reaches into f2's header
    p = FrameParser()
    items = p.feed(short + f2)
    assert [x.raw for x in items] == [f2]  # type: ignore[union-attr]
    assert p.checksum_errors == 1
    assert p.resync_bytes == len(short)


def test_partial_sync_byte_kept_across_feeds() -> None:
    f = _frame(7)
    p = FrameParser()
    assert p.feed(b"\x00\x11" + f[:1]) == []
    assert p.buffered == 1 and p.resync_bytes == 2
    assert [x.raw for x in p.feed(f[1:])] == [f]  # type: ignore[union-attr]


def test_reset_counts_dropped_partial_frame() -> None:
    p = FrameParser()
    p.feed(_frame(8)[:100])
    p.reset()
    assert p.buffered == 0 and p.resync_bytes == 100


# ---------------------------------------------------------------------------------------------
# Parser properties (Hypothesis)
# ---------------------------------------------------------------------------------------------

frame_seeds = st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _scene_frame(seed: int) -> bytes:
    """A plausible frame, including negative and hot pixels, so every word range is exercised."""
    rng = np.random.default_rng(seed)
    words = rng.integers(-4000, 30000, 768).astype(np.int16)
    return encode_frame(words, int(rng.integers(-4000, 12500)))


def _parse_chunked(stream: bytes, cuts: list[int]) -> tuple[list[bytes], FrameParser]:
    p = FrameParser()
    out: list[bytes] = []
    prev = 0
    for c in sorted(set(cuts)) + [len(stream)]:
        out += [x.raw for x in p.feed(stream[prev:c]) if isinstance(x, DecodedFrame)]
        prev = c
    return out, p


@PROPS
@given(seeds=frame_seeds, data=st.data())
def test_any_chunking_yields_identical_frames(seeds: list[int], data: st.DataObject) -> None:
    frames = [_scene_frame(s) for s in seeds]
    stream = b"".join(frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=40))
    got, p = _parse_chunked(stream, cuts)
    assert got == frames
    assert p.frames_ok == len(frames) and p.resync_bytes == 0 and p.checksum_errors == 0
    whole = FrameParser().feed(stream)
    for a, b in zip(whole, got, strict=True):
        assert isinstance(a, DecodedFrame) and a.raw == b


@PROPS
@given(
    seeds=st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3, unique=True),
    victim=st.integers(0, 2),
    kind=st.sampled_from(["flip", "drop", "insert"]),
    pos=st.integers(0, FRAME_LEN - 1),
    value=st.integers(0, 255),
    bit=st.integers(0, 7),
    cuts=st.lists(st.integers(0, 3 * FRAME_LEN), max_size=8),
)
def test_single_byte_corruption_costs_only_the_damaged_frame(
    seeds: list[int], victim: int, kind: str, pos: int, value: int, bit: int, cuts: list[int]
) -> None:
    frames = [_scene_frame(s) for s in seeds]
    damaged = bytearray(frames[victim])
    if kind == "flip":
        damaged[pos] ^= 1 << bit
    elif kind == "drop":
        del damaged[pos]
    else:
        damaged.insert(pos, value)
    stream = b"".join(bytes(damaged) if i == victim else f for i, f in enumerate(frames))
    got, p = _parse_chunked(stream, cuts)
    others = [f for i, f in enumerate(frames) if i != victim]
    # never a frame that was not sent; the undamaged ones always, in order
    assert all(g in frames for g in got)
    assert [g for g in got if g != frames[victim]] == others
    if kind == "flip":
        assert got == others  # sum-16 catches every single-byte change
        assert p.checksum_errors == (1 if pos >= 4 else 0)  # a damaged header is never taken as one
    elif frames[victim] in got:
        # only an insertion in front of the header can leave the frame itself intact
        assert kind == "insert" and bytes(damaged).endswith(frames[victim])


@PROPS
@given(seed=st.integers(0, 2**32 - 1), garbage=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 5000), max_size=10))
def test_garbage_before_a_frame_costs_only_resync_bytes(seed: int, garbage: bytes, cuts: list[int]) -> None:
    frame = _scene_frame(seed)
    got, p = _parse_chunked(garbage + frame, cuts)
    assert got == [frame]
    assert p.frames_ok == 1
    # every garbage byte is accounted for: thrown away while hunting, or taken as a (chance) reply
    assert p.resync_bytes + 4 * p.emissivity_replies == len(garbage)


def test_parser_throughput_is_far_above_the_link() -> None:
    """460800 baud carries ~30 frames/s; parsing must take a small fraction of a core for that."""
    stream = b"".join(_frame(i) for i in range(30))
    p = FrameParser()
    t0 = time.perf_counter()
    for i in range(0, len(stream), 64):
        p.feed(stream[i : i + 64])
    elapsed = time.perf_counter() - t0
    assert p.frames_ok == 30
    assert elapsed < 0.25, f"30 frames took {elapsed:.3f} s"


# ---------------------------------------------------------------------------------------------
# Port naming
# ---------------------------------------------------------------------------------------------


def test_resolve_port_prefers_by_id_link(tmp_path: os.PathLike[str]) -> None:
    dev = os.path.join(tmp_path, "ttyUSB3")
    other = os.path.join(tmp_path, "ttyUSB0")
    for p in (dev, other):
        open(p, "w").close()
    by_id = os.path.join(tmp_path, "by-id")
    os.mkdir(by_id)
    link = os.path.join(by_id, "usb-1a86_USB_Serial-if00-port0")
    os.symlink(dev, link)
    assert resolve_port(dev, by_id_dir=by_id) == link
    assert resolve_port(other, by_id_dir=by_id) == other
    assert resolve_port(link, by_id_dir=by_id) == link
    assert resolve_port(dev, by_id_dir=os.path.join(tmp_path, "missing")) == dev
