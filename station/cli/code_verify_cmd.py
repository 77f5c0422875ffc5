"""``stationctl code verify (IMAGE | --payload TEXT) --trust FILE [--at ISO-8601] --json``.

Judges a code exactly as the station does (same verifiers, same guards except the replay memory,
which is the station's own) against the trust list in FILE, at the time ``--at`` (default now).
One JSON object per code: ``{"valid", "reason", "colour", "kid", "expires", "status", "issuer",
"source"}``. The payload itself is never printed here (``code decode`` shows it).

Exit 0 when every code judged is valid, 1 when one is not (or the image has no code), 2 on a usage
error (unreadable trust list, image, or time). Any payload gives a verdict: a code the verifiers cannot
parse is ``valid: false`` with its reason (``malformed`` at worst), never a traceback. ``valid: true``
means signed by a signer on the trust list and in date; ``colour: null`` with it is a genuine code
without our colour claim (an EU Digital COVID Certificate), which the lane's ``policy.uncoloured_code``
decides.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

import click


def _parse_at(text: str | None) -> float:
    if not text:
        return time.time()
    try:
        when = dt.datetime.fromisoformat(text)  # Python 3.11 reads a trailing Z
    except ValueError:
        click.echo(f"--at {text!r}: not an ISO-8601 time", err=True)
        sys.exit(2)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)  # a station's clocks are UTC
    return when.timestamp()


def _iso(when: Any) -> str | None:
    """Return a UNIX time as ISO-8601 UTC; None for anything that is not a date a calendar holds."""
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        return None
    try:
        return dt.datetime.fromtimestamp(when, dt.UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def verdict_record(verdict: Any) -> dict[str, Any]:
    """Return the JSON record of a verdict (never the payload)."""
    d = verdict.detail
    return {
        "valid": verdict.status.value == "valid",
        "reason": verdict.reason,
        # A genuine code without our colour claim (an EU DCC) is valid with colour null: the lane's policy decides.
        "colour": verdict.colour.value if verdict.colour else _text(d.get("colour")),
        "kid": _text(d.get("kid")),
        "expires": _iso(d.get("expires")),
        "status": verdict.status.value,
        "issuer": _text(d.get("issuer")),
        "source": verdict.source,
    }


@click.command("verify")
@click.argument("image", required=False, type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--payload", default=None, help="The code's text (e.g. HC1:…) instead of an image")
@click.option(
    "--trust",
    "trust_file",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help='Trust list JSON {"certificates": [{"kid": b64, "der": b64}]} (plain or as pushed)',
)
@click.option("--at", "at", default=None, help="Judge as at this time (ISO-8601, UTC if no zone); default now")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per code")
@click.pass_obj
def verify(obj: Any, image: Path | None, payload: str | None, trust_file: Path, at: str | None, as_json: bool) -> None:
    """Judge a health code (signature, trust list, validity window, dynamic refresh)."""
    from station.codes.colour import ScreenColourVerifier
    from station.codes.hc1 import Hc1Verifier
    from station.codes.judge import CodeJudge, station_salt
    from station.codes.local_claims import LocalClaimsVerifier
    from station.codes.trust_list import TrustListError, TrustStore, load_file
    from station.domain.model import DecodedCode

    if (image is None) == (payload is None):
        click.echo("give either IMAGE or --payload TEXT", err=True)
        sys.exit(2)
    try:
        trusted = load_file(trust_file)
    except TrustListError as exc:
        click.echo(f"--trust: {exc}", err=True)
        sys.exit(2)
    if not trusted.keys:
        # Every code would be unknown_kid: a list with no usable certificate is a mistake to report, not a verdict.
        click.echo(f"--trust: {trust_file}: no usable signer certificate (see the warnings above)", err=True)
        sys.exit(2)
    cfg = obj.load() if obj is not None else None
    c = cfg.codes if cfg is not None else None
    now = _parse_at(at)
    hc1 = Hc1Verifier(
        TrustStore(None, trust_file), max_clock_skew_s=c.max_clock_skew_s if c else 300.0, dynamic_grace_s=c.dynamic_grace_s if c else 30.0
    )
    chain: list[Any] = [hc1, LocalClaimsVerifier(max_clock_skew_s=c.max_clock_skew_s if c else 300.0)]
    if c is not None and "screen-colour" in c.verifiers:
        chain.append(ScreenColourVerifier())
    judge = CodeJudge(chain, salt=station_salt(None), seen=None)
    codes: list[tuple[DecodedCode, Any]] = []
    if payload is not None:
        # surrogateescape: the argument's own bytes, even when they are not UTF-8 (a hostile code pasted by hand).
        codes.append((DecodedCode(payload.strip().encode("utf-8", "surrogateescape"), "QRCODE", None, "text"), None))
    else:
        import cv2

        from station.app import build_reader
        from station.config import StationConfig

        img = cv2.imread(str(image), cv2.IMREAD_COLOR)
        if img is None:
            click.echo(f"{image}: not a readable image", err=True)
            sys.exit(2)
        reader = build_reader(cfg or StationConfig())
        codes = [(code, img) for code in reader.decode(img)]
    records = [verdict_record(judge.verify_in_frame(code, img, now)) for code, img in codes]
    if not records:
        records = [{"valid": False, "reason": "no_code", "colour": None, "kid": None, "expires": None}]
    for rec in records:
        if as_json:
            # ASCII escapes: prints on any terminal encoding, whatever text a code carried.
            click.echo(json.dumps(rec, ensure_ascii=True))
        else:
            click.echo(
                f"{'VALID' if rec['valid'] else 'NOT VALID'} reason={rec['reason']} colour={rec['colour']} "
                f"kid={rec['kid']} expires={rec['expires']}"
            )
    sys.exit(0 if all(r["valid"] for r in records) else 1)
