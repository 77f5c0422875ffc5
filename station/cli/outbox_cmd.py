"""``stationctl outbox …``: look at, send and export the MQTT outbox (store-and-forward queue).

``status`` and ``export`` only read the database (read-only, safe beside the running daemon).
``flush`` writes (it deletes rows the broker acknowledged), so it refuses while the daemon runs:
the daemon is already sending them, and two senders only make duplicates.

Exit codes: 0 ok / outbox empty, 1 not (rows left after ``--timeout``, broker unreachable or
refused the credentials, no database), 2 usage error.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from station.cli.common import ControlError, ControlUnavailable, Ctx, ask_daemon, group, open_store, station_db


@group()
def outbox() -> None:
    """Look at, send and export the queue of messages waiting for the command centre's broker."""


@outbox.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.option("--mqtt", "mqtt_url", default=None, help="Accepted for symmetry with flush; not used")
@click.pass_obj
def outbox_status(obj: Ctx, as_json: bool, mqtt_url: str | None) -> None:
    """Pending rows, age of the oldest, payload bytes, alarms, dropped rows."""
    store = open_store(obj, read_only=True)
    try:
        data = store.outbox_stats()
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(
        f"pending: {data['pending']} message(s), {data['bytes']} bytes, "
        f"oldest {data['oldest_age_s']:.0f} s, alarms pending {data['alarms_pending']}"
    )
    for key in ("dropped", "bounds_alarm"):
        if data.get(key):
            click.echo(f"{key}: {data[key]}")


@outbox.command("export")
@click.argument("file", required=False, default="-", type=click.Path(path_type=Path, dir_okay=False, allow_dash=True))
@click.option("--mqtt", "mqtt_url", default=None, help="Accepted like the other outbox commands; not used")
@click.pass_obj
def outbox_export(obj: Ctx, file: Path, mqtt_url: str | None) -> None:
    """Pending messages as JSON lines (FILE or - for stdout), oldest first; nothing is removed."""
    store = open_store(obj, read_only=True)
    out = sys.stdout if str(file) == "-" else open(file, "w", encoding="utf-8")  # noqa: SIM115
    count = 0
    try:
        after = 0
        while True:
            rows = store.outbox_rows_after(after, 1000)
            if not rows:
                break
            for r in rows:
                line = {
                    "id": r.id,
                    "msg_id": r.msg_id,
                    "topic": r.topic,
                    "qos": r.qos,
                    "priority": r.priority,
                    "created_at_ms": r.created_at,
                    "attempts": r.attempts,
                    "payload": json.loads(r.payload),
                }
                out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
                count += 1
            after = rows[-1].id
    finally:
        store.close()
        if out is not sys.stdout:
            out.close()
    click.echo(f"exported {count} message(s)", err=True)


@outbox.command("flush")
@click.option("--mqtt", "mqtt_url", default=None, help="mqtt://host:port (default: mqtt.url from the config)")
@click.option("--timeout", type=click.FloatRange(0.1, 86400), default=60.0, show_default=True, help="Give up after this many seconds")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON")
@click.pass_obj
def outbox_flush(obj: Ctx, mqtt_url: str | None, timeout: float, as_json: bool) -> None:
    """Send what is pending now; exit 0 when the outbox is empty, 1 if rows are left."""
    from station.config import MqttSection
    from station.link.sync import OutboxPump, publisher_from_config, status_topic
    from station.ops.runtime import read_runtime_status

    cfg, _db = station_db(obj)
    url = mqtt_url or cfg.mqtt.url
    if not url:
        click.echo("no broker: give --mqtt mqtt://host:port or set mqtt.url", err=True)
        sys.exit(2)
    try:
        MqttSection.model_validate({"url": url})
    except ValueError as exc:
        from station.ops.redact import error_text, redact_url

        click.echo(f"--mqtt {redact_url(url)!r}: {error_text(exc)}", err=True)
        sys.exit(2)
    daemon = read_runtime_status(obj.data_dir())
    if daemon.get("state") == "running":
        click.echo(
            f"the station daemon (pid {daemon.get('pid')}) is running and already sends the outbox; stop it first or let it sync", err=True
        )
        sys.exit(1)
    store = open_store(obj, read_only=False)
    base = status_topic(cfg.mqtt.topic_prefix, cfg.station.site, cfg.station.id).rsplit("/", 1)[0]
    publisher = publisher_from_config(cfg, store.session, url=url, client_suffix="-flush", status_topic_override=f"{base}/state/flush")
    pump = OutboxPump(store, publisher, max_in_flight=cfg.mqtt.max_in_flight)
    before = store.outbox_stats()["pending"]
    t0 = time.monotonic()
    pump.start()
    publisher.start()
    try:
        drained = False
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if pump.drain(min(0.5, max(0.0, deadline - time.monotonic()))):
                drained = True
                break
            if publisher.state == "auth_failed":
                break
    finally:
        pump.stop()
        publisher.stop()
        after = store.outbox_stats()["pending"]
        store.close()
    result = {
        "sent": before - after,
        "pending": after,
        "seconds": round(time.monotonic() - t0, 2),
        "broker_state": publisher.state if not drained else "ok",
        "last_error": publisher.last_error,
    }
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"sent {result['sent']}, pending {after}, in {result['seconds']} s"
            + ("" if drained else f"; broker: {publisher.last_error or 'not reached'}")
        )
    sys.exit(0 if drained else 1)


@outbox.command("retry")
@click.option(
    "--dropped", is_flag=True, help="Also re-queue messages the outbox bounds dropped (they are dropped again if the bounds still bite)"
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def outbox_retry(obj: Ctx, dropped: bool, as_json: bool) -> None:
    """Send pending messages now: wake the running daemon's sender (and optionally re-queue dropped rows).

    Exit 0 when the daemon was woken (or there is nothing pending), 1 when no daemon runs — then
    ``stationctl outbox flush`` sends from here.
    """
    requeued = 0
    if dropped:
        store = open_store(obj, read_only=False)
        try:
            requeued = store.write_transaction(
                lambda conn: (
                    conn.execute(
                        "UPDATE outbox SET dropped_at = NULL, attempts = 0, last_error = NULL "
                        "WHERE dropped_at IS NOT NULL AND acked_at IS NULL"
                    ).rowcount
                )
            )
        finally:
            store.close()
    store = open_store(obj, read_only=True)
    try:
        pending = store.outbox_stats()["pending"]
    finally:
        store.close()
    try:
        woke, path = ask_daemon(obj.data_dir(), "outbox_wake")
        result = {"requeued": requeued, "pending": pending, "daemon": str(path), **woke}
        code = 0 if woke.get("woken") or not pending else 1
    except (ControlUnavailable, ControlError) as exc:
        result = {"requeued": requeued, "pending": pending, "daemon": None, "woken": False, "reason": str(exc)}
        code = 0 if not pending else 1
    if as_json:
        click.echo(json.dumps(result))
    else:
        msg = f"{pending} pending" + (f", {requeued} dropped message(s) re-queued" if dropped else "")
        if result.get("woken"):
            msg += f"; daemon's sender woken (broker {'connected' if result.get('mqtt_connected') else 'not connected'})"
        elif result["daemon"] is None:
            msg += "; no daemon running: `stationctl outbox flush` sends from here"
        else:
            msg += f"; {result.get('reason')}"
        click.echo(msg)
    sys.exit(code)
