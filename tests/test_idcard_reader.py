"""The ID card reader driver against the emulator over a real pty: each fault, the polling source, privacy."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.idcard.sam_reader import IdCardSource, SamLink, open_port, read_card, sam_check
from sim.idcard_emulator import EmulatedCard, IdCardEmulator
from station.codes.idcard import HASH_CENTRE, HASH_STATION, IdHasher
from tests.support.waiting import wait_until

ID_NUMBER = "11010119900307803X"
CARD = EmulatedCard(ID_NUMBER, name="王测试", address="测试省测试市幸福路8号")
SECRETS = (ID_NUMBER, "王测试", "幸福路")
HASHER = IdHasher(b"centre-key-for-tests-only-32byte", HASH_CENTRE)


@pytest.fixture
def emu() -> Iterator[IdCardEmulator]:
    with IdCardEmulator() as e:
        yield e


@pytest.fixture
def link(emu: IdCardEmulator) -> Iterator[SamLink]:
    ser = open_port(emu.port, 115200)
    try:
        yield SamLink(ser, reply_timeout_s=0.5)
    finally:
        ser.close()


def test_a_card_is_read_as_hash_mask_and_dates(emu: IdCardEmulator, link: SamLink) -> None:
    emu.present_card(CARD)
    got = read_card(link, HASHER, HASHER.kind)
    assert got.outcome == "read" and got.facts is not None
    assert got.facts.id_masked == "1****************X" and got.facts.id_hash == HASHER(ID_NUMBER)
    assert emu.commands == [(0x20, 0x01), (0x20, 0x02), (0x30, 0x01)]
    assert got.ms >= 1295 * 10 / 115200 * 1000 * 0.9  # the base-info reply took its time on the wire


def test_no_card(emu: IdCardEmulator, link: SamLink) -> None:
    assert read_card(link, HASHER, HASHER.kind).outcome == "no_card"
    assert emu.commands == [(0x20, 0x01)]


@pytest.mark.slow  # waits out a busy SAM
def test_a_busy_sam_is_no_answer_then_reads_again(emu: IdCardEmulator, link: SamLink) -> None:
    emu.present_card(CARD)
    emu.sam_busy(0.8)
    assert read_card(link, HASHER, HASHER.kind).outcome == "no_answer"
    wait_until(lambda: read_card(link, HASHER, HASHER.kind).outcome == "read", 5, "the SAM answers again")


@pytest.mark.slow  # waits out a reply timeout
def test_one_corrupt_reply_is_asked_again_two_are_garbled(emu: IdCardEmulator, link: SamLink) -> None:
    emu.present_card(CARD)
    emu.corrupt_replies(1)
    assert read_card(link, HASHER, HASHER.kind).outcome == "read"
    assert link.counters["retries"] == 1 and link.parser.counter_dict()["problem_bad_checksum"] == 1
    emu.corrupt_replies(2)
    assert read_card(link, HASHER, HASHER.kind).outcome == "garbled"


def test_a_card_pulled_mid_read_is_read_failed_then_no_card(emu: IdCardEmulator, link: SamLink) -> None:
    emu.present_card(CARD)
    emu.pull_card_mid_read()
    assert read_card(link, HASHER, HASHER.kind).outcome == "read_failed"
    assert read_card(link, HASHER, HASHER.kind).outcome == "no_card"


def test_sam_check_passes_and_fails(emu: IdCardEmulator, link: SamLink) -> None:
    assert sam_check(link) == (True, "SAM reset and self-test ok")
    emu.selftest_fails = True
    assert sam_check(link) == (False, "SAM status: sam_selftest_failed")
    emu.sam_busy(5.0)
    assert sam_check(link) == (False, "reset SAM: no_answer")


@pytest.mark.slow  # polls a missing port, then a card twice
def test_the_source_hands_each_card_out_once_and_finds_its_reader_late(
    emu: IdCardEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = {"path": str(tmp_path / "not-yet")}
    hasher = IdHasher.from_config("", tmp_path / "data")  # no centre key: the station's salt
    src = IdCardSource("unused", hasher, hasher.kind, poll_s=0.05, reply_timeout_s=0.5, port_resolver=lambda: port["path"])
    src.start()
    try:
        wait_until(lambda: int(src.stats()["open_failures"]) >= 1, 5, "the missing port is noticed")
        assert src.read(0.2) is None
        port["path"] = emu.port
        wait_until(src.connected, 10, "reader found")
        emu.present_card(CARD)
        first = src.read(5.0)
        assert first is not None and first.hash_key == HASH_STATION
        assert src.read(0.5) is None, "the card left on the reader is not read again"
        seen_empty = int(src.stats().get("no_card", 0))
        emu.remove_card()
        wait_until(lambda: int(src.stats().get("no_card", 0)) > seen_empty, 5, "the card is gone")
        emu.present_card(CARD)
        again = src.read(5.0)
        assert again is not None and again.id_hash == first.id_hash
        assert src.stats()["cards"] == 2
    finally:
        src.stop()
    held = repr(first) + repr(again) + repr(src.stats()) + repr(emu.counters)
    logged = "\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records)
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for secret in SECRETS:
        assert secret not in held and secret not in logged
        assert secret.encode() not in on_disk and secret.encode("utf-16-le") not in on_disk
