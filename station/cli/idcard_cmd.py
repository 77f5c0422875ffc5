"""``stationctl idcard read`` and ``stationctl test idcard``: the resident ID card reader from the command line.

``idcard read`` waits for a card on the reader (``--port``, default ``idcard.port``) and prints what
the station keeps of it: the masked number (first and last character), the keyed hash and the
card's dates. The ID number itself is never printed. Exit 0 a card was read, 1 no card (or it could
not be read), 2 the port or the key file cannot be used, 3 refused (the daemon owns the reader).

``test idcard`` resets the reader's SAM and asks its self-test status: PASS or FAIL like the other
``test`` verbs.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from typing import Any, NoReturn

import click

from station.cli.common import Ctx, group
from station.cli.test_cmd import _refuse_if_daemon, _verdict

EXIT_NO_CARD = 1
EXIT_PORT = 2


def _fail(obj: Ctx, code: int, outcome: str, message: str) -> NoReturn:
    if obj.as_json:
        click.echo(json.dumps({"outcome": outcome, "error": message}, ensure_ascii=False))
    else:
        click.echo(message, err=True)
    sys.exit(code)


@group("idcard")
def idcard() -> None:
    """Read resident ID cards (only a masked number and a keyed hash are ever shown)."""


@idcard.command("read")
@click.option("--port", default=None, help="The reader's serial port (default: idcard.port)")
@click.option("--baud", type=int, default=None, help="Serial speed (default: idcard.baud)")
@click.option("--timeout", type=click.FloatRange(0.1, 300), default=10.0, show_default=True, help="Seconds to wait for a card")
@click.option("--force", is_flag=True, help="Even while the daemon runs (it holds the reader)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def idcard_read(obj: Ctx, port: str | None, baud: int | None, timeout: float, force: bool, as_json: bool) -> None:
    """Wait for a card and print its masked number, keyed hash and dates."""
    from drivers.idcard.sam_reader import PortError, SamLink, open_port, read_card
    from station.codes.idcard import IdHasher, KeyFileError

    obj.as_json = as_json
    cfg = obj.load()
    if cfg.idcard.enabled:
        _refuse_if_daemon(obj, "ID card reader", force)
    path = port or cfg.idcard.port
    try:
        hasher = IdHasher.from_config(cfg.idcard.key_file, obj.data_dir())
    except KeyFileError as exc:
        _fail(obj, EXIT_PORT, "key_error", str(exc))
    try:
        ser = open_port(path, baud or cfg.idcard.baud)
    except PortError as exc:
        _fail(obj, EXIT_PORT, "port_error", f"{exc}; check the cable and idcard.port (`stationctl devices list`)")
    outcome = "no_card"
    try:
        link = SamLink(ser, cfg.idcard.reply_timeout_s)
        deadline = time.monotonic() + timeout
        while True:
            got = read_card(link, hasher, hasher.kind)
            outcome = got.outcome
            if got.facts is not None:
                facts = got.facts
                expired = facts.expired(dt.date.today())
                record: dict[str, Any] = {"outcome": "read", **facts.as_record(), "expired": expired, "ms": got.ms}
                if as_json:
                    click.echo(json.dumps(record, ensure_ascii=False))
                else:
                    until = facts.valid_to.isoformat() if facts.valid_to else "long term"
                    click.echo(
                        f"ID card {facts.id_masked}: valid {facts.valid_from.isoformat()} to {until}"
                        f"{' (EXPIRED)' if expired else ''}; hash ({facts.hash_key} key) {facts.id_hash}"
                    )
                    if facts.hash_key != "centre":
                        click.echo("  no idcard.key_file: the hash is keyed by this station's salt, the centre cannot look it up")
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(min(cfg.idcard.poll_s, max(0.0, deadline - time.monotonic())))
    except PortError as exc:
        _fail(obj, EXIT_PORT, "port_error", f"{path}: {exc}")
    finally:
        ser.close()
    _fail(obj, EXIT_NO_CARD, outcome, f"no card read on {path} within {timeout:g} s (last: {outcome})")


@click.command("idcard")
@click.option("--port", default=None, help="The reader's serial port (default: idcard.port)")
@click.option("--force", is_flag=True, help="Even while the daemon runs (it holds the reader)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def test_idcard(obj: Ctx, port: str | None, force: bool, as_json: bool) -> None:
    """Reset the ID card reader's SAM and ask its self-test status."""
    from drivers.idcard.sam_reader import PortError, SamLink, open_port, sam_check

    obj.as_json = as_json
    cfg = obj.load()
    if cfg.idcard.enabled:
        _refuse_if_daemon(obj, "ID card reader", force)
    path = port or cfg.idcard.port
    try:
        ser = open_port(path, cfg.idcard.baud)
    except PortError as exc:
        _verdict(obj, "idcard", False, f"{exc}; check the cable and idcard.port", as_json, port=path)
    try:
        link = SamLink(ser, cfg.idcard.reply_timeout_s)
        ok, detail = sam_check(link)
    except PortError as exc:
        ok, detail = False, f"port failed: {exc}"
    finally:
        ser.close()
    _verdict(obj, "idcard", ok, f"{detail} on {path}", as_json, port=path)
