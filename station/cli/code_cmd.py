"""``stationctl code …``: health codes from the technician's side.

``code decode IMAGE…`` reads QR codes from image files with the configured reader (or
``--reader``) and prints what was found. It is the one place the payload text is shown: to the
technician on this terminal, never logged, stored or sent. ``code verify`` (judging a code) is
added to this same group by station/cli/code_verify_cmd.py.

cv2 and the decoders are imported inside the commands so ``stationctl`` keeps starting fast.

Exit codes of ``decode``: 0 a code was found in every image, 1 an image had none or could not be
read, 2 usage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from station.cli.common import Ctx, group

READERS = ("config", "cascade", "zxing", "pyzbar", "opencv")


@group("code")
def code() -> None:
    """Read and check health codes (QR) from images."""


def shown(text: str) -> str:
    """Return a payload as it may reach a terminal: control, bidi and other unprintable characters escaped.

    A QR can carry ESC sequences that would rewrite the technician's screen.
    """
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _box(box: Any) -> list[float] | None:
    return None if box is None else [round(box.x1, 1), round(box.y1, 1), round(box.x2, 1), round(box.y2, 1)]


@code.command("decode")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--reader", "reader_name", type=click.Choice(READERS), default="config", show_default=True, help="Decoder; config = codes.reader"
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image")
@click.pass_obj
def decode_cmd(obj: Ctx, images: tuple[Path, ...], reader_name: str, as_json: bool) -> None:
    """Decode the QR codes in IMAGE… (payload text is shown here only)."""
    import cv2

    from station.app import build_reader

    cfg = obj.load()
    codes_cfg = cfg.codes.model_copy(update={"track": False, **({} if reader_name == "config" else {"reader": reader_name})})
    # Each image is a different scene: no tracking between them.
    reader = build_reader(cfg.model_copy(update={"codes": codes_cfg}))
    all_found = True
    for path in images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if image is None:
            all_found = False
            if as_json:
                click.echo(json.dumps({"image": str(path), "codes": [], "error": "unreadable image"}, ensure_ascii=True))
            else:
                click.echo(f"{path}: unreadable image", err=True)
            continue
        found = reader.decode(image)
        all_found = all_found and bool(found)
        items = [{"text": c.payload.decode("utf-8", "replace"), "decoder": c.decoder, "box": _box(c.box)} for c in found]
        if as_json:
            # ASCII escapes: any text a code carries prints on any terminal and cannot drive it.
            click.echo(json.dumps({"image": str(path), "codes": items}, ensure_ascii=True))
        else:
            click.echo(f"{path}: {len(items)} code(s)")
            for item in items:
                click.echo(f"  [{item['decoder']}] box={item['box']} {shown(str(item['text']))}")
    sys.exit(0 if all_found else 1)
