"""Log lines print the fields passed with ``extra=`` (text and JSON), quoted so a hostile value cannot fake a field."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from station.ops.logs import JsonFormatter, KeyValueFormatter


def _record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("station.test")
    return logger.makeRecord("station.test", logging.WARNING, __file__, 1, "camera open failed", None, None, extra=extra)


def test_text_lines_carry_the_extra_fields_as_key_value() -> None:
    line = KeyValueFormatter("%(levelname)s %(name)s %(message)s").format(_record(device="/dev/video0", retry_s=2.0))
    assert line == "WARNING station.test camera open failed device=/dev/video0 retry_s=2.0"


def test_a_hostile_value_is_quoted_and_cannot_start_a_line_or_a_field() -> None:
    line = KeyValueFormatter("%(message)s").format(_record(payload="x\nERROR forged=1", empty=""))
    assert "\n" not in line
    assert line == 'camera open failed payload="x\\nERROR forged=1" empty=""'


def test_json_lines_hold_the_message_and_the_fields() -> None:
    doc = json.loads(JsonFormatter().format(_record(device="/dev/video0", problems=3)))
    assert doc["msg"] == "camera open failed" and doc["level"] == "WARNING" and doc["logger"] == "station.test"
    assert doc["device"] == "/dev/video0" and doc["problems"] == 3 and isinstance(doc["ts"], float)


def test_the_daemon_prints_a_real_extra_field(tmp_path: Path) -> None:
    """A real call site with extra= (the model directory check) through the configured handler."""
    code = (
        "from station.ops.logs import configure; configure('INFO', fmt='{fmt}');"
        "import logging; logging.getLogger('station.models').warning('model directory has problems', "
        "extra={{'dir': '/opt/models', 'problems': 2}})"
    )
    text = subprocess.run([sys.executable, "-c", code.format(fmt="text")], capture_output=True, text=True, check=True, timeout=60).stderr
    assert "model directory has problems dir=/opt/models problems=2" in text, text
    out = subprocess.run([sys.executable, "-c", code.format(fmt="json")], capture_output=True, text=True, check=True, timeout=60).stderr
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["dir"] == "/opt/models" and doc["problems"] == 2


def test_nested_fields_print_as_dotted_keys() -> None:
    line = KeyValueFormatter("%(message)s").format(_record(thermal={"event": "link_up", "baud": 460800}))
    assert line == "camera open failed thermal.event=link_up thermal.baud=460800"
