"""The big screen's fleet page: every station's software and upkeep along the district tree, and signed pushes (admin).

* ``GET /fleet`` — the page (static/fleet.html, fleet.js, fleet.css), any role;
* ``GET /api/fleet`` — :func:`station.centre.fleet.fleet_view` grouped along the district tree (stations
  the tree does not place under ``unassigned``; stations heard on ``events`` that never published a
  state appear too, marked ``no_state``; every station with its missing events and gap repair), and whether pushes are available;
* ``GET /api/fleet/pushes`` — **admin**: the newest push audit rows;
* ``POST /api/fleet/push`` — **admin**: ``{command, station: "site/station" | node: "path", reason,
  fever_threshold_c | file}``: a ``set-threshold``, ``trust-list`` or ``resident-plates`` command signed
  with the centre's command key (the alarm mirror's, ``station centre run --command-key``), addressed
  to each station, with a 20 s deadline (station/centre/push.py), the stations' results returned and
  every push audited (who, what, to whom, result). A refused attempt by another role is audited too
  (at most 10 a minute per user; the rest are logged).

The district key is not pushed from the page: it would have to be uploaded to the centre's web
server, and the key must never be kept beside the data (``station centre push --command district-key``
on the key officer's machine does it). Every input is checked before anything is signed, and an
error names the field: ``file`` (size, JSON shape, each plate or certificate), ``fever_threshold_c``
(the station's own bounds, station/config.py), ``station``/``node``, ``reason``, ``command``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from station.board.auth import Session
from station.board.schema import SEGMENT, Dropped, decode_object
from station.centre import db, screen
from station.centre import fleet as fl
from station.centre import push as pu
from station.centre.auth import allowed
from station.centre.page_files import Need, page_routes
from station.centre.tree import UNASSIGNED, Tree, TreeError, parse_tree, rollup, stations_under
from station.ops.ratelimit import RateLimiter

log = logging.getLogger("station.centre.page_fleet")

FILES = {"fleet.js": "text/javascript; charset=utf-8", "fleet.css": "text/css; charset=utf-8"}
PAGE_COMMANDS = ("set-threshold", "trust-list", "resident-plates")
FILE_MAX = 192 * 1024  # the signed command must stay under a station's centre.command_max_bytes (256 KiB by default)
BODY_MAX = 2 * FILE_MAX + 8192  # the file travels as a JSON string: quotes and newlines are escaped
REASON_MIN, REASON_MAX = 8, 300
NODE_MAX = 400
MAX_TARGETS = 2000


def threshold_bounds() -> tuple[float, float]:
    """Return the fever threshold's allowed range, read from the station's own config schema (so they cannot drift)."""
    from station.config import ScreeningSection

    low, high = 35.0, 40.0
    for rule in ScreeningSection.model_fields["fever_threshold_c"].metadata:
        low = float(getattr(rule, "ge", low))
        high = float(getattr(rule, "le", high))
    return low, high


@dataclass(frozen=True, slots=True)
class PushRequest:
    """A checked push: the command, its arguments, where it goes (one station or a tree node) and why."""

    command: str
    args: dict[str, Any]
    station: tuple[str, str] | None
    node: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a push request was refused: the field and what is wrong with it."""

    field: str
    message: str

    def __str__(self) -> str:
        """Return ``field: message``."""
        return f"{self.field}: {self.message}"


def _clean_reason(value: Any) -> str | Invalid:
    if not isinstance(value, str):
        return Invalid("reason", f"say why, {REASON_MIN}-{REASON_MAX} characters")
    text = " ".join("".join(c if c.isprintable() else " " for c in value[: REASON_MAX * 2]).split())
    if not REASON_MIN <= len(text) <= REASON_MAX:
        return Invalid("reason", f"say why, {REASON_MIN}-{REASON_MAX} characters (got {len(text)})")
    return text


def _file_object(value: Any) -> dict[str, Any] | Invalid:
    if not isinstance(value, str) or not value:
        return Invalid("file", "choose a JSON file")
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) > FILE_MAX:
        return Invalid("file", f"{len(raw)} bytes: at most {FILE_MAX} bytes (a station takes signed commands up to 256 KiB)")
    try:
        return decode_object(raw, FILE_MAX)
    except Dropped as exc:
        what = {"not_utf8": "not UTF-8 text", "not_json": "not valid JSON", "not_object": "expected a JSON object {…}"}
        return Invalid("file", what.get(exc.reason, exc.reason))


def _resident_args(doc: dict[str, Any]) -> dict[str, Any] | Invalid:
    from station.store import residents

    unknown = sorted(set(doc) - {"plates", "version"})
    if unknown:
        return Invalid("file", f'unexpected keys {unknown[:5]}: expected {{"plates": ["浙A12345", …], "version": N}}')
    version = doc.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**31):
        return Invalid("file.version", "an integer >= 1 when given")
    try:
        plates = residents.check_list(doc.get("plates"))
    except residents.PlateTextError as exc:
        return Invalid("file.plates", str(exc)[:400])
    args: dict[str, Any] = {"plates": plates}
    if version is not None:
        args["version"] = version
    return args


def _trust_args(doc: dict[str, Any]) -> dict[str, Any] | Invalid:
    from station.codes.trust_list import TrustListError, parse_certificates

    unknown = sorted(set(doc) - {"version", "certificates", "signature"})
    if unknown:
        return Invalid("file", f"unexpected keys {unknown[:5]}: expected a signed trust list {{version, certificates, signature}}")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**31:
        return Invalid("file.version", "an integer >= 1")
    signature = doc.get("signature")
    try:
        if not isinstance(signature, str) or not base64.b64decode(signature, validate=True):
            raise ValueError
    except (binascii.Error, ValueError):
        return Invalid("file.signature", "the trust-list signer's signature (base64) is missing or not base64")
    try:
        parse_certificates(doc.get("certificates"), strict=True)
    except TrustListError as exc:
        return Invalid("file.certificates", str(exc)[:400])
    return {"version": version, "document": {"version": version, "certificates": doc["certificates"], "signature": signature}}


def parse_push(body: Any) -> PushRequest | Invalid:
    """Return the checked push request, or the field that is wrong and why; never raise."""
    try:
        if not isinstance(body, dict):
            return Invalid("body", "expected a JSON object")
        command = body.get("command")
        if command not in PAGE_COMMANDS:
            return Invalid("command", f"one of {', '.join(PAGE_COMMANDS)}")
        station, node = body.get("station"), body.get("node")
        target: tuple[str, str] | None = None
        if (station is None) == (node is None):
            return Invalid("station", "give one target: station (site/station) or node (a tree path)")
        if station is not None:
            site, sep, name = station.partition("/") if isinstance(station, str) else ("", "", "")
            if not sep or not SEGMENT.match(site) or not SEGMENT.match(name):
                return Invalid("station", "expected site/station (letters, digits, _ and -)")
            target = (site, name)
        elif not isinstance(node, str) or len(node) > NODE_MAX:
            return Invalid("node", f"a tree path of at most {NODE_MAX} characters ('' is the whole district)")
        reason = _clean_reason(body.get("reason"))
        if isinstance(reason, Invalid):
            return reason
        if command == "set-threshold":
            value = body.get("fever_threshold_c")
            low, high = threshold_bounds()
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
                return Invalid("fever_threshold_c", f"a number of °C between {low:g} and {high:g}")
            if not low <= value <= high:  # an int of 400 digits compares fine; it is never turned into a float
                return Invalid("fever_threshold_c", f"{str(value)[:12]} °C is outside {low:g}-{high:g} °C")
            args: dict[str, Any] | Invalid = {"fever_threshold_c": round(float(value), 2)}
        else:
            doc = _file_object(body.get("file"))
            if isinstance(doc, Invalid):
                return doc
            args = _resident_args(doc) if command == "resident-plates" else _trust_args(doc)
        if isinstance(args, Invalid):
            return args
        return PushRequest(str(command), args, target, node if target is None else None, reason)
    except Exception as exc:  # a check this module missed: still a verdict, never a 500
        log.warning("push request check failed error=%s", type(exc).__name__)
        return Invalid("body", f"not understood ({type(exc).__name__})")


def known_stations(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Return every station heard on events or on its retained status/state."""
    heard = set(screen.known_stations(conn))
    heard |= {(str(a), str(b)) for a, b in conn.execute("SELECT site, station FROM station_status").fetchall()}
    return sorted(heard)


def _tree(conn: psycopg.Connection[Any]) -> tuple[int, Tree]:
    version, text = screen.load_tree_text(conn)
    tree = parse_tree(text)
    if isinstance(tree, TreeError):  # a stored version was valid when saved; a newer parser may disagree
        raise RuntimeError(f"stored tree version {version} no longer parses: {tree}")
    return version, tree


def _summary(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "stations": len(rows),
        "online": sum(1 for r in rows if r.get("state") == "online"),
        "offline_over_10min": sum(1 for r in rows if r.get("offline_over_10min")),
        "doctor_failing": sum(1 for r in rows if r.get("doctor_exit") not in (None, 0)),
        "no_state": sum(1 for r in rows if r.get("no_state")),
        **fl.upkeep_totals(rows),
    }


def fleet_tree(tree: Tree, view: dict[str, Any], heard: list[tuple[str, str]]) -> dict[str, Any]:
    """Return the district tree with each checkpoint's stations' fleet rows and every node's summary; unplaced under ``unassigned``."""
    rows = {(r["site"], r["station"]): r for r in view["stations"]}
    heard_only = {(r["site"], r["station"]): r for r in view.get("heard_only", [])}  # no state, but missing events or repairs
    body = rollup(tree, {}, sorted(set(rows) | set(heard) | set(heard_only)))

    def fill(node: dict[str, Any]) -> list[dict[str, Any]]:
        node.pop("totals", None)
        node.pop("entries", None)
        mine: list[dict[str, Any]] = []
        if "stations" in node:
            node["stations"] = [
                rows.get((s["site"], s["station"]))
                or {
                    **heard_only.get((s["site"], s["station"]), {}),
                    "site": s["site"],
                    "station": s["station"],
                    "state": None,
                    "no_state": True,
                }
                for s in node["stations"]
            ]
            mine += node["stations"]
        for child in node.get("children", []):
            mine += fill(child)
        node["summary"] = _summary(mine)
        return mine

    fill(body)
    return body


def push_outcomes_json(command: str, outcomes: list[pu.PushOutcome]) -> list[dict[str, Any]]:
    """Return what the page shows of each station's answer (its ``/result``: ok, reason, error, kept result fields)."""
    return [
        {
            "site": o.site,
            "station": o.station,
            "id": o.command_id,
            "ok": o.ok,
            "reason": o.reason,
            "error": o.error,
            "result": pu.result_summary(command, o.result),
        }
        for o in outcomes
    ]


def fleet_routes(sc: Any, need: Need) -> list[Route]:
    """Return the fleet page's routes for ``create_screen_app``; ``need`` is its role/origin/content-type wrapper."""
    schema_ready: list[bool] = []
    refusals_audited = RateLimiter(10, 60.0)  # a viewer's script must not fill the audit table: the rest are logged only

    def connection() -> Any:
        return sc.pool.connection()

    def ensure(conn: psycopg.Connection[Any]) -> None:
        if not schema_ready:
            with conn.transaction():
                db.ddl_lock(conn)
                fl.ensure_fleet_schema(conn)
            schema_ready.append(True)

    def pushes_status() -> dict[str, Any]:
        low, high = threshold_bounds()
        mirror = sc.mirror
        out: dict[str, Any] = {
            "available": mirror is not None,
            "commands": list(PAGE_COMMANDS),
            "threshold_range": [low, high],
            "file_max_bytes": FILE_MAX,
        }
        if mirror is None:
            out["why"] = "the centre runs without a command key (station centre run --command-key): pushes are unavailable"
        else:
            from station.link.command_auth import key_id_of

            out["key_id"] = key_id_of(mirror.key.public_key())
        return out

    def read_fleet() -> dict[str, Any]:
        with connection() as conn:
            ensure(conn)
            version, tree = _tree(conn)
            view = fl.fleet_view(conn, now=sc.clock())
            heard = known_stations(conn)
        grouped = fleet_tree(tree, view, heard)
        return {
            "generated_at": view["generated_at"],
            "summary": {**view["summary"], **grouped["summary"]},
            "tree": grouped,
            "tree_version": version,
        }

    @need("viewer")
    async def fleet_api(request: Request, session: Session) -> Response:
        body = await run_in_threadpool(read_fleet)
        body["you"] = {"user": session.user, "role": session.role}
        body["pushes"] = pushes_status() if allowed(session.role, "admin") else {"available": False, "why": "admin role required"}
        return JSONResponse(body)

    def read_pushes() -> list[dict[str, Any]]:
        with connection() as conn:
            cur = conn.execute(
                "SELECT id, extract(epoch FROM at)::float8 AS at, actor, role, action, target, reason, detail FROM centre_audit "
                "WHERE action LIKE 'push.%%' ORDER BY id DESC LIMIT 50"
            )
            cols = [c.name for c in cur.description or ()]
            return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]

    @need("admin")
    async def pushes(request: Request, session: Session) -> Response:
        return JSONResponse({"pushes": await run_in_threadpool(read_pushes)})

    async def read_body(request: Request) -> bytes | None:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > BODY_MAX:
                return None
        return raw

    def refuse(field: str, message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": f"{field}: {message}", "field": field}, status_code=status)

    def audit_refusal(session: Session, path: str) -> None:
        with connection() as conn, conn.transaction():
            db.audit(conn, session.user, session.role, "push.refused", None, {"ok": False, "error": "admin role required", "path": path})

    def resolve(req: PushRequest) -> list[tuple[str, str]] | Invalid:
        with connection() as conn:
            ensure(conn)
            heard = known_stations(conn)
            if req.station is not None:
                if req.station not in heard:
                    return Invalid("station", f"{'/'.join(req.station)} is not a station the centre has heard")
                return [req.station]
            _version, tree = _tree(conn)
        node = req.node or ""
        if node != UNASSIGNED and node not in tree.nodes():
            return Invalid("node", f"no tree node {node[:80]!r}")
        targets = stations_under(tree, node, heard)
        if not targets:
            return Invalid("node", f"no stations under {node[:80] or 'the district'!r}")
        if len(targets) > MAX_TARGETS:
            return Invalid("node", f"{len(targets)} stations: at most {MAX_TARGETS} in one push (push to the towns one by one)")
        return targets

    def send(req: PushRequest, targets: list[tuple[str, str]], session: Session) -> list[pu.PushOutcome]:
        mirror = sc.mirror
        try:
            return pu.push(
                mirror.endpoint,
                mirror.key,
                targets,
                req.command,
                req.args,
                by=session.user[:64],
                prefix=mirror.prefix,
                tls_ca=mirror.tls_ca,
            )
        except (OSError, ConnectionError, ValueError) as exc:  # the broker is unreachable: nothing was sent, and that is audited
            log.warning("push not sent command=%s stations=%d error=%s", req.command, len(targets), exc)
            return [pu.PushOutcome(site, station, "", False, "not_sent", f"broker: {exc}"[:300], None) for site, station in targets]

    def record(req: PushRequest, outcomes: list[pu.PushOutcome], session: Session) -> None:
        with connection() as conn:
            pu.audit_pushes(conn, session.user, session.role, req.command, req.args, outcomes, req.reason)

    @need("viewer")
    async def push_api(request: Request, session: Session) -> Response:
        if not allowed(session.role, "admin"):
            if refusals_audited.allow(session.user):
                await run_in_threadpool(audit_refusal, session, request.url.path)
            log.warning("push refused user=%s role=%s: admin role required", session.user, session.role)
            return JSONResponse({"error": "admin role required"}, status_code=403)
        if sc.mirror is None:
            return refuse("command", pushes_status()["why"], 503)
        raw = await read_body(request)
        if raw is None:
            return refuse("file", f"request larger than {BODY_MAX} bytes (a file may have at most {FILE_MAX})", 413)
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return refuse("body", "not a JSON object")
        req = parse_push(body)
        if isinstance(req, Invalid):
            return refuse(req.field, req.message)
        targets = await run_in_threadpool(resolve, req)
        if isinstance(targets, Invalid):
            return refuse(targets.field, targets.message)
        started = time.monotonic()
        outcomes = await run_in_threadpool(send, req, targets, session)
        elapsed_ms = round(1000 * (time.monotonic() - started))
        await run_in_threadpool(record, req, outcomes, session)
        log.info(
            "push from the page user=%s command=%s stations=%d ok=%d elapsed_ms=%d",
            session.user,
            req.command,
            len(outcomes),
            sum(1 for o in outcomes if o.ok),
            elapsed_ms,
        )
        return JSONResponse(
            {
                "command": req.command,
                "ok": all(o.ok for o in outcomes),
                "elapsed_ms": elapsed_ms,
                "args": pu.args_summary(req.command, req.args),
                "outcomes": push_outcomes_json(req.command, outcomes),
            }
        )

    return [
        *page_routes(need, "/fleet", "fleet.html", "viewer", "/fleet/{name}", FILES),
        Route("/api/fleet", fleet_api),
        Route("/api/fleet/pushes", pushes),
        Route("/api/fleet/push", push_api, methods=["POST"]),
    ]
