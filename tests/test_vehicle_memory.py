"""The vehicle lane's low-memory mode: large malloc blocks on their own mappings, handed back when freed.

malloc settings are process-wide, so what they do is checked in a fresh interpreter each time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from station.app import apply_memory_settings, vehicle_low_memory
from station.config import StationConfig

ROOT = Path(__file__).resolve().parents[1]

# glibc's mallinfo2: hblks counts the blocks malloc serves from their own mmap.
PROBE = """
import ctypes, json, sys
libc = ctypes.CDLL("libc.so.6")
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def own_mappings(size):
    p = libc.malloc(size)
    n = libc.mallinfo2().hblks
    libc.free(p)
    return n - libc.mallinfo2().hblks  # 1 while a block of its own mapping was held, 0 when it came from a heap
applied = None
exec(sys.argv[1])
out = {"applied": applied, "first_4mib": own_mappings(4 << 20), "second_4mib": own_mappings(4 << 20), "frame": own_mappings(640 * 480 * 3)}
print(json.dumps(out))
"""


def _probe(setup: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, setup], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_without_the_setting_a_freed_large_block_stays_in_the_heap() -> None:
    """glibc's own policy (what the setting is for): after the first large free, the same size comes from the heap."""
    out = _probe("")
    assert out["first_4mib"] == 1 and out["second_4mib"] == 0


def test_large_blocks_get_their_own_mapping_every_time_and_frames_do_not() -> None:
    out = _probe("from station.ops.malloc import mmap_large_allocations\napplied = mmap_large_allocations()")
    assert out["applied"] is True
    assert out["first_4mib"] == 1 and out["second_4mib"] == 1  # returned to the system at each free
    assert out["frame"] == 0  # a 640×480 BGR frame (0.9 MB) stays below 1 MiB: no mapping per frame


@pytest.mark.slow
def test_the_daemon_applies_it_only_in_the_vehicle_lanes_low_memory_mode() -> None:
    setup = "from station.app import apply_memory_settings\nfrom station.config import StationConfig as C\napplied = apply_memory_settings"
    on = _probe(setup + '(C.model_validate({"vehicle": {"mode": "vehicle"}}))')
    assert on["applied"] is True and on["second_4mib"] == 1
    off = _probe(setup + '(C.model_validate({"vehicle": {"mode": "vehicle", "plate_low_memory": False}}))')
    assert off["applied"] is False and off["second_4mib"] == 0
    person = _probe(setup + "(C())")
    assert person["applied"] is False and person["second_4mib"] == 0


def test_low_memory_mode_is_the_vehicle_lane_with_plate_low_memory() -> None:
    assert vehicle_low_memory(StationConfig.model_validate({"vehicle": {"mode": "vehicle"}}))
    assert not vehicle_low_memory(StationConfig.model_validate({"vehicle": {"mode": "vehicle", "plate_low_memory": False}}))
    assert not vehicle_low_memory(StationConfig())
    assert apply_memory_settings(StationConfig()) is False  # the person lane keeps malloc's own policy
