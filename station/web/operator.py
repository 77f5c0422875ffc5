"""The operator display's web app (Starlette) and its server (uvicorn on a daemon thread).

Endpoints: ``GET /`` the page; ``GET /api/status`` station, devices, today's counts, last
decision, alarms; ``GET /api/events/stream`` server-sent events; ``GET /api/live.mjpeg`` the live
picture; ``POST /api/alarms/{event_id}/ack``, ``POST /api/override/open-gate``,
``POST /api/override/recheck``, ``POST /api/override/staff-check`` (JSON with ``operator`` and
``pin``; the staff check also ``reason`` and ``decision``); ``POST /api/registrations`` an outsider
vehicle's registration (``plate``, ``reason``, ``destination``, ``phone``, ``operator``, ``pin``);
``GET /api/crops/{event_id}/{kind}``
an alarm's kept face or thermal crop (``no-store``); ``GET /healthz``. Every
request but ``/healthz`` passes the Host/Origin checks and, bound beyond 127.0.0.1, needs the
station's token (station/web/access.py).

The server runs in the daemon's process so the page needs no second service: uvicorn's own event
loop on one thread, the socket bound by us first so a busy port is a logged error (the gate keeps
working without its display) rather than uvicorn calling ``sys.exit`` on a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from station.web.access import AccessPolicy, OperatorAccess, is_loopback, load_token
from station.web.desk import ActionRefused, DeskSettings, OperatorDesk
from station.web.live import BOUNDARY, LiveView

if TYPE_CHECKING:
    from station.config import HttpSection
    from station.lane.pipeline import Pipeline
    from station.ports import Clock
    from station.store.events import SqliteEventStore
    from station.web.registration import Registrar

log = logging.getLogger("station.web")

STATIC = Path(__file__).with_name("static")
SSE_RETRY_MS = 2000  # EventSource reconnects this soon after the daemon restarts
BODY_MAX = 4096
HEARTBEAT_S = 2.0  # a status message this often keeps counts fresh and proxies from timing out


def create_app(desk: OperatorDesk, live: LiveView | None = None, policy: AccessPolicy | None = None) -> OperatorAccess:
    """Return the operator page's app behind its access checks (no token unless ``policy`` has one)."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)  # no icon on a kiosk; keeps the browser log clean

    async def status(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(desk.status))

    async def events(request: Request) -> Response:
        queue = desk.subscribe()

        async def stream() -> Any:
            try:
                yield f"retry: {SSE_RETRY_MS}\n\n"
                yield f"event: status\ndata: {json.dumps(await run_in_threadpool(desk.status), default=str)}\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), timeout=HEARTBEAT_S)
                    except TimeoutError:
                        if await request.is_disconnected():
                            return
                        item = f"event: status\ndata: {json.dumps(await run_in_threadpool(desk.status), default=str)}\n\n"
                    if item is None:  # the server is stopping
                        return
                    yield item
            finally:
                desk.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def mjpeg(request: Request) -> Response:
        if live is None:
            return JSONResponse({"error": "no live picture on this station"}, status_code=404)
        return StreamingResponse(
            live.stream(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}", headers={"Cache-Control": "no-cache, no-store"}
        )

    async def body(request: Request) -> dict[str, Any]:
        # JSON only: a cross-site form or text/plain POST cannot carry it without a CORS preflight,
        # which this app never grants.
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise ActionRefused(415, "bad_request", "send the request as application/json")
        raw = b""
        async for chunk in request.stream():  # capped: a PIN request is a few dozen bytes
            raw += chunk
            if len(raw) > BODY_MAX:
                raise ActionRefused(413, "bad_request", f"the request body is larger than {BODY_MAX} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise ActionRefused(400, "bad_request", "the request body must be JSON") from None
        if not isinstance(data, dict):
            raise ActionRefused(400, "bad_request", "the request body must be a JSON object")
        return data

    def refused(exc: ActionRefused) -> Response:
        return JSONResponse({"ok": False, "reason": exc.reason, "error": str(exc), **exc.extra}, status_code=exc.status)

    async def ack(request: Request) -> Response:
        try:
            data = await body(request)
            out = await run_in_threadpool(
                desk.acknowledge, request.path_params["event_id"], str(data.get("operator", "")), str(data.get("pin", ""))
            )
        except ActionRefused as exc:
            return refused(exc)
        return JSONResponse({"ok": True, **out})

    async def open_gate(request: Request) -> Response:
        try:
            data = await body(request)
            out = await run_in_threadpool(desk.open_gate, str(data.get("operator", "")), str(data.get("pin", "")))
        except ActionRefused as exc:
            return refused(exc)
        return JSONResponse({"ok": True, **out})

    async def recheck(request: Request) -> Response:
        try:
            data = await body(request)
            out = await run_in_threadpool(
                desk.recheck, str(data.get("event_id", "")), data.get("clinical_c"), str(data.get("operator", "")), str(data.get("pin", ""))
            )
        except ActionRefused as exc:
            return refused(exc)
        return JSONResponse({"ok": True, **out})

    async def staff_check(request: Request) -> Response:
        try:
            data = await body(request)
            out = await run_in_threadpool(
                desk.staff_check, data.get("reason"), data.get("decision"), str(data.get("operator", "")), str(data.get("pin", ""))
            )
        except ActionRefused as exc:
            return refused(exc)
        return JSONResponse({"ok": True, **out})

    async def register_outsider(request: Request) -> Response:
        try:
            data = await body(request)
            out = await run_in_threadpool(
                desk.register_outsider,
                data.get("plate"),
                data.get("reason"),
                data.get("destination"),
                data.get("phone"),
                str(data.get("operator", "")),
                str(data.get("pin", "")),
            )
        except ActionRefused as exc:
            return refused(exc)
        return JSONResponse({"ok": True, **out})

    async def crop(request: Request) -> Response:
        # The person's face: same access as the page (behind OperatorAccess), and never cached.
        def read() -> tuple[bytes, str] | None:
            path = desk.crop_file(request.path_params["event_id"], request.path_params["kind"])
            try:  # read whole (a few kB): an erase between the look-up and the answer is a 404, not a broken response
                return (path.read_bytes(), "image/jpeg" if path.suffix == ".jpg" else "image/png") if path is not None else None
            except OSError:
                return None

        found = await run_in_threadpool(read)
        if found is None:
            return JSONResponse({"error": "no such crop"}, status_code=404, headers={"Cache-Control": "no-store"})
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "no-store"})

    routes = [
        Route("/", page),
        Route("/kiosk", page),
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),
        Route("/api/status", status),
        Route("/api/events/stream", events),
        Route("/api/live.mjpeg", mjpeg),
        Route("/api/crops/{event_id}/{kind}", crop),
        Route("/api/alarms/{event_id}/ack", ack, methods=["POST"]),
        Route("/api/override/open-gate", open_gate, methods=["POST"]),
        Route("/api/override/recheck", recheck, methods=["POST"]),
        Route("/api/override/staff-check", staff_check, methods=["POST"]),
        Route("/api/registrations", register_outsider, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return OperatorAccess(Starlette(routes=routes), policy or AccessPolicy())


class OperatorServer:
    """Serve the operator app with uvicorn on its own thread; ``stop()`` ends streams and joins.

    The constructor binds the socket, so a busy port raises ``OSError`` there, before any thread runs.
    """

    def __init__(self, desk: OperatorDesk, live: LiveView | None, listen: str, port: int, policy: AccessPolicy | None = None) -> None:
        import uvicorn

        self.desk = desk
        self.live = live
        self.policy = policy or AccessPolicy()
        self.app = create_app(desk, live, self.policy)
        family = socket.AF_INET6 if ":" in listen else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((listen, port))
            self.sock.listen(64)
        except OSError:
            self.sock.close()
            raise
        self.sock.set_inheritable(True)
        self.port = int(self.sock.getsockname()[1])
        host = f"[{listen}]" if family == socket.AF_INET6 else listen
        self.url = f"http://{host}:{self.port}/"
        # The kiosk's URL: with the token when one is needed (never logged).
        self.kiosk_url = self.url + (f"?token={self.policy.token}" if self.policy.token else "")
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2, ws="none")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the live encoder and the server thread."""
        if self.live is not None:
            self.live.start()
        self._thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])), name="station-web", daemon=True)
        self._thread.start()
        log.info("operator display serving url=%s", self.url)

    def stop(self) -> None:
        """End the SSE and MJPEG streams, stop the server and close the socket."""
        self.desk.close()  # SSE streams end now instead of at uvicorn's graceful timeout
        if self.live is not None:
            self.live.stop()  # MJPEG streams end with the encoder
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10.0)
            if self._thread.is_alive():
                log.error("operator display did not stop")
        self.sock.close()


def start_operator_display(
    *,
    http: HttpSection,
    identity: Mapping[str, str],
    data_dir: Path,
    store: SqliteEventStore,
    pipeline: Pipeline,
    runtime_status: Callable[[], dict[str, Any]],
    registration: np.ndarray,
    fever_threshold_c: float,
    command_ttl_s: float,
    clock: Clock,
    registrar: Registrar | None = None,
) -> OperatorServer:
    """Start the display on the running lane; raise ``OSError`` if it cannot listen (the caller logs, the gate works on).

    ``identity`` is the station's ``site``, ``id`` and ``lane``; ``data_dir`` holds the page token.
    """
    h = http
    token = None
    if not is_loopback(h.listen):
        token = load_token(data_dir)
        log.warning(
            "operator display listens beyond this box listen=%s: every page needs the token (stationctl operator-url), actions the PIN",
            h.listen,
        )
    policy = AccessPolicy(allowed_hosts=frozenset(n.lower() for n in h.allowed_hosts), token=token)

    def devices() -> dict[str, Any]:
        s = runtime_status()
        pump = s.get("outbox_pump") or {}
        return {
            "lane_state": s.get("lane_state"),
            "thermal": s.get("thermal", {}).get("state"),
            "camera": s.get("camera", {}).get("state"),
            "detector": s.get("detector"),
            "mqtt": s.get("mqtt_state")
            or ("off" if s.get("mqtt_connected") is None else "connected" if s.get("mqtt_connected") else "offline"),
            "outbox_pending": store.outbox_stats().get("pending"),
            "outbox_pump": pump.get("state") if isinstance(pump, dict) else None,
            "live": live.stats(),
            "uptime_s": s.get("uptime_s"),
            # The data directory refusing writes (read-only or full card): the page shows an alarm.
            "storage": {k: storage.get(k) for k in ("state", "held", "since_ts")} if (storage := s.get("storage")) else None,
        }

    settings = DeskSettings(
        language=h.language,
        pin_hash=h.pin_hash,
        pin_max_failures=h.pin_max_failures,
        pin_lock_s=h.pin_lock_s,
        pin_lock_max_s=h.pin_lock_max_s,
        overrides_per_min=h.overrides_per_min,
        fever_threshold_c=fever_threshold_c,
        command_ttl_s=command_ttl_s,
    )
    desk = OperatorDesk(
        store=store,
        gate=pipeline.gate,
        identity=dict(identity),
        settings=settings,
        devices=devices,
        direction_counts=lambda: dict(pipeline.lane.directions.counts),
        staff_check=pipeline.staff_check,
        registrar=registrar,
        monotonic=clock.monotonic,
        wall=clock.wall,
    )
    live = LiveView(registration, fps=h.mjpeg_fps, width=h.mjpeg_width)
    server = OperatorServer(desk, live, h.listen, h.port, policy)
    pipeline.frame_taps.append(live.offer_frame)
    pipeline.face_taps.append(live.offer_faces)
    pipeline.thermal_taps.append(live.offer_thermal)
    pipeline.add_listener(desk.on_decided)
    server.start()
    return server
