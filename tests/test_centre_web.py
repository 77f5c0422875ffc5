"""The centre's /healthz and /metrics: built from the real subscriber's and writer's counters, no event data."""

from __future__ import annotations

from starlette.testclient import TestClient

from station.centre.ingest import Ingestor
from station.centre.mqtt import CentreSubscriber
from station.centre.web import create_app, health, metrics_text


def _parts() -> tuple[CentreSubscriber, Ingestor]:
    sub = CentreSubscriber("mqtt://127.0.0.1:1", lambda d: None, share_group="centre", client_id="centre-t")
    writer = Ingestor("postgresql://nobody@127.0.0.1:1/x", sub.ack)
    return sub, writer


def test_not_connected_and_no_database_is_degraded_with_reasons_and_503() -> None:
    sub, writer = _parts()
    with TestClient(create_app(sub.stats, writer.stats)) as client:
        resp = client.get("/healthz")
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "degraded" and body["reasons"] == ["mqtt_idle", "database", "writer_stopped"]
    assert body["mqtt"]["filter"] == "$share/centre/checkpoint/v1/+/+/events/#"
    assert body["writer"]["received"] == 0


def test_metrics_carry_the_counters_and_drop_reasons_as_labels() -> None:
    sub, writer = _parts()
    writer.dropped.update({"not_json": 3, 'we"ird\nreason': 1})
    writer.inserted, writer.duplicates = 41, 2
    text = metrics_text(sub.stats(), writer.stats())
    assert "centre_events_inserted_total 41\n" in text and "centre_duplicates_total 2\n" in text
    assert 'centre_dropped_total{reason="not_json"} 3\n' in text
    assert 'centre_dropped_total{reason="we\\"ird reason"} 1\n' in text
    assert "centre_up 0\n" in text
    with TestClient(create_app(sub.stats, writer.stats)) as client:
        resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    assert health({"state": "connected"}, {"db_ok": True, "writer_alive": True}) == ("ok", [])
