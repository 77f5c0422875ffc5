"""The tracking wrapper: an unchanged code is not decoded again; a changed, moved or removed one is.

The inner reader is the real cascade, wrapped in a counter so the test can see how often it ran.
Frames get fresh sensor noise each time, as a camera's would.
"""

from __future__ import annotations

import numpy as np
import pytest
import segno

from drivers.codes.cascade import CascadeReader
from drivers.codes.code_tracker import TrackingReader
from station.app import build_reader
from station.config import StationConfig
from station.domain.model import DecodedCode
from station.ports import CodeReader

A = b"https://hc.example.org/t/aaaaaaaaaaaaaaaa"
B = b"https://hc.example.org/t/bbbbbbbbbbbbbbbb"


class CountingReader:
    """Counts calls to a real reader."""

    def __init__(self, inner: CodeReader) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def decode(self, image: np.ndarray) -> list[DecodedCode]:
        self.calls += 1
        return self.inner.decode(image)


def frame(payload: bytes | None, at: tuple[int, int] = (200, 120), seed: int = 0, module_px: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((480, 640, 3), 160, np.uint8)
    if payload is not None:
        m = np.pad(np.array([list(r) for r in segno.make(payload, error="m").matrix], dtype=bool), 4)
        m = np.repeat(np.repeat(m, module_px, 0), module_px, 1)
        code = np.where(m[:, :, None], np.uint8(0), np.uint8(255)).repeat(3, axis=2)
        img[at[1] : at[1] + code.shape[0], at[0] : at[0] + code.shape[1]] = code
    noise = rng.integers(-3, 4, img.shape)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


@pytest.fixture
def counted() -> tuple[TrackingReader, CountingReader]:
    inner = CountingReader(CascadeReader())
    return TrackingReader(inner, max_reuse=100), inner


def test_unchanged_code_is_decoded_once_and_still_returned_every_frame(counted: tuple[TrackingReader, CountingReader]) -> None:
    tracker, inner = counted
    for seed in range(8):
        assert [c.payload for c in tracker.decode(frame(A, seed=seed))] == [A]
        assert tracker.last_was_cached == (seed > 0)  # what the pipeline counts as decodes_cached
    assert inner.calls == 1
    assert tracker.stats() == {"decodes": 1, "cache_hits": 7}


def test_changed_code_in_the_same_place_is_decoded_again(counted: tuple[TrackingReader, CountingReader]) -> None:
    tracker, inner = counted
    assert [c.payload for c in tracker.decode(frame(A, seed=1))] == [A]
    assert [c.payload for c in tracker.decode(frame(B, seed=2))] == [B]
    assert inner.calls == 2
    assert [c.payload for c in tracker.decode(frame(B, seed=3))] == [B]
    assert inner.calls == 2


def test_moved_or_removed_code_is_decoded_again(counted: tuple[TrackingReader, CountingReader]) -> None:
    tracker, inner = counted
    tracker.decode(frame(A, seed=1))
    moved = tracker.decode(frame(A, at=(330, 200), seed=2))
    assert [c.payload for c in moved] == [A]
    assert inner.calls == 2
    assert moved[0].box is not None and moved[0].box.x1 > 330
    assert tracker.decode(frame(None, seed=3)) == []
    assert inner.calls == 3


def test_frames_without_codes_are_always_decoded(counted: tuple[TrackingReader, CountingReader]) -> None:
    tracker, inner = counted
    for seed in range(5):
        assert tracker.decode(frame(None, seed=seed)) == []
    assert inner.calls == 5 and tracker.cache_hits == 0


def test_max_reuse_forces_a_decode_so_a_second_phone_is_found() -> None:
    inner = CountingReader(CascadeReader())
    tracker = TrackingReader(inner, max_reuse=3)
    for seed in range(4):
        tracker.decode(frame(A, at=(40, 40), seed=seed))
    assert inner.calls == 1
    # A second phone appears outside the tracked region: found at the latest after max_reuse hits.
    two = frame(A, at=(40, 40), seed=9)
    two[200 : 200 + 205, 380 : 380 + 205] = frame(B, at=(0, 0), seed=10)[:205, :205]
    assert sorted(c.payload for c in tracker.decode(two)) == sorted([A, B])
    assert inner.calls == 2


def test_build_reader_defaults_to_the_tracked_cascade_and_builds_every_choice() -> None:
    cfg = StationConfig()
    assert cfg.codes.reader == "cascade" and cfg.codes.track
    reader = build_reader(cfg)
    assert isinstance(reader, TrackingReader) and isinstance(reader.inner, CascadeReader)
    assert reader.name == "cascade"
    for name in ("cascade", "zxing", "pyzbar", "opencv"):
        codes = cfg.codes.model_copy(update={"reader": name, "track": False})
        plain = build_reader(cfg.model_copy(update={"codes": codes}))
        assert not isinstance(plain, TrackingReader)
        assert [c.payload for c in plain.decode(frame(A))] == [A], name
