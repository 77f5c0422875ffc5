"""The centre's HTTP endpoints (Starlette): health and metrics of one replica; no event data.

* ``GET /healthz`` — JSON: ``status`` (``ok`` or ``degraded`` with ``reasons``), the MQTT link, the
  writer's counters (received, inserted, duplicates, dropped by reason, misdated, batches, pending)
  and lags (``last_event_age_s``: commit time minus the newest event's time in the last batch;
  ``last_ack_delay_s``: longest wait from arrival to acknowledgement in it). 503 when degraded.
* ``GET /metrics`` — the same counters in Prometheus' text format.

Neither shows a station's events, so neither needs a login; everything else is the big screen
(station/centre/page.py), which does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp


def health(link: dict[str, Any], writer: dict[str, Any]) -> tuple[str, list[str]]:
    """Return ``ok`` or ``degraded`` and why, from the link's and the writer's stats."""
    reasons = []
    if link.get("state") != "connected":
        reasons.append(f"mqtt_{link.get('state')}")
    if not writer.get("db_ok"):
        reasons.append("database")
    if not writer.get("writer_alive"):
        reasons.append("writer_stopped")
    return ("ok" if not reasons else "degraded"), reasons


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def metrics_text(link: dict[str, Any], writer: dict[str, Any]) -> str:
    """Return the counters in Prometheus' text exposition format."""
    lines = []

    def metric(name: str, kind: str, value: Any, labels: dict[str, str] | None = None, help_: str = "") -> None:
        if value is None:
            return
        if help_:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
        label = "{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}" if labels else ""
        lines.append(f"{name}{label} {float(value):g}")

    metric("centre_messages_received_total", "counter", writer["received"], help_="Messages taken from the broker")
    metric("centre_events_inserted_total", "counter", writer["inserted"], help_="Rows new to the database")
    metric("centre_duplicates_total", "counter", writer["duplicates"], help_="Redeliveries already stored (same msg_id)")
    metric("centre_misdated_total", "counter", writer["misdated"], help_="Rows outside the kept days (events_misdated)")
    metric("centre_batches_total", "counter", writer["batches"], help_="Committed batches")
    metric("centre_acks_total", "counter", writer["acked"], help_="Messages acknowledged after their commit")
    metric("centre_db_errors_total", "counter", writer["db_errors"], help_="Database errors (retried)")
    metric("centre_pending", "gauge", writer["pending"], help_="Messages received and not yet committed")
    metric("centre_last_event_age_seconds", "gauge", writer["last_event_age_s"], help_="Commit time minus the newest event time")
    metric("centre_last_ack_delay_seconds", "gauge", writer["last_ack_delay_s"], help_="Longest arrival-to-ack wait, last batch")
    metric("centre_last_commit_milliseconds", "gauge", writer["last_commit_ms"], help_="Duration of the last batch's commit")
    lines.append("# HELP centre_dropped_total Messages dropped, by reason")
    lines.append("# TYPE centre_dropped_total counter")
    for reason, n in sorted(writer["dropped"].items()):
        metric("centre_dropped_total", "counter", n, {"reason": reason})
    repair = writer.get("repair")  # the gap repair's counters (station/centre/repair.py), with a command key
    if isinstance(repair, dict):
        lines.append("# HELP centre_repair_total Gap repair: rounds, resend commands asked and answered, ranges closed / given up")
        lines.append("# TYPE centre_repair_total counter")
        for what, n in sorted(repair.items()):
            metric("centre_repair_total", "counter", n, {"what": what})
    status, _ = health(link, writer)
    metric("centre_up", "gauge", 1 if status == "ok" else 0, help_="1 when the broker and the database are reachable")
    return "\n".join(lines) + "\n"


def create_app(
    link_stats: Callable[[], dict[str, Any]], writer_stats: Callable[[], dict[str, Any]], screen: ASGIApp | None = None
) -> Starlette:
    """Build the health/metrics app from the subscriber's and the writer's stats functions; ``screen`` serves the rest.

    ``screen`` is the logged-in big screen (station/centre/page.py), mounted at ``/`` behind these two routes.
    """

    async def healthz(request: Request) -> Response:
        link, writer = link_stats(), writer_stats()
        status, reasons = health(link, writer)
        body = {"status": status, "reasons": reasons, "mqtt": link, "writer": writer}
        return Response(json.dumps(body, default=str), status_code=200 if status == "ok" else 503, media_type="application/json")

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(metrics_text(link_stats(), writer_stats()), media_type="text/plain; version=0.0.4")

    routes: list[BaseRoute] = [Route("/healthz", healthz), Route("/metrics", metrics)]
    if screen is not None:
        routes.append(Mount("/", app=screen))
    return Starlette(routes=routes)
