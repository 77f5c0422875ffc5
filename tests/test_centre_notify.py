"""Notifications to the tree's responders (station/centre/notify.py) against real parts.

A real PostgreSQL (two notifiers on it play two replicas), a real HTTP server receiving the webhooks
(it checks the HMAC), a real SMTP server (aiosmtpd), a real mosquitto for the MQTT copy; escalation and
retries are driven by a manual wall clock, never by sleeping.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion
from starlette.testclient import TestClient

from station.centre import db, screen
from station.centre import fleet as fl
from station.centre.cli import centre as centre_cli
from station.centre.notify import (
    MqttNotices,
    Notifier,
    NotifyOptions,
    SmtpServer,
    ack_route,
    check_token,
    email_text,
    make_token,
    parse_smtp,
    plain,
)
from station.centre.parse import EventRow
from station.centre.run import Centre, CentreOptions
from station.centre.screen import ensure_screen_schema, save_tree
from station.centre.tree import TreeError, parse_tree
from tests.support.broker import free_port, mosquitto_broker
from tests.support.clocks import ManualClock
from tests.support.postgres import pg_server, pg_url
from tests.support.waiting import wait_until

__all__ = ["pg_server", "pg_url"]

SECRET = b"webhook-secret-for-tests-0123456789"
UTC = dt.UTC


# --- the receivers ---------------------------------------------------------------------------------


class Webhooks:
    """A real HTTP server taking webhook POSTs: checks each one's HMAC, answers 500 while ``fail`` > 0."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.fail = 0
        self.lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                stamp = self.headers.get("X-Checkpoint-Timestamp", "")
                want = "sha256=" + hmac.new(SECRET, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(want, self.headers.get("X-Checkpoint-Signature", ""))
                with hooks.lock:
                    if not ok:
                        hooks.bad_signatures += 1
                        status = 401
                    elif hooks.fail > 0:
                        hooks.fail -= 1
                        status = 500
                    else:
                        hooks.received.append({"path": self.path, **json.loads(body)})
                        status = 204
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd's handler: keeps each message; refuses (554) while ``refuse`` > 0."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.refuse = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse > 0:
            self.refuse -= 1
            return "554 5.7.1 refused for the test"
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(msg, email.message.EmailMessage)
        self.messages.append(msg)
        return "250 OK"


@pytest.fixture
def hooks() -> Iterator[Webhooks]:
    server = Webhooks()
    yield server
    server.close()


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


def tree_text(hook_url: str) -> str:
    return f"""
[district]
name = "测试区"
responders = [{{name = "区值班", email = "district@example.org"}}]

[towns.east]
name = "城东街道"
responders = [{{name = "镇值班", webhook = "{hook_url}/town"}}]

[towns.east.grids.g1]
name = "网格一"
responders = [{{name = "网格长", email = "grid@example.org"}}]

[towns.east.grids.g1.checkpoints.gate]
name = "东门卡口"
stations = ["gate-a/st-01"]
responders = [{{name = "门岗", webhook = "{hook_url}/gate", email = "gate@example.org"}}]
"""


def seed(url: str, hook_url: str, now: float) -> None:
    """Save the tree; write a fever alarm (screening + its alarm copy) and an outsider visit through the batch writer."""
    with db.connect(url, autocommit=True) as conn:
        ensure_screen_schema(conn)
        save_tree(conn, 0, tree_text(hook_url), "chief", "admin", "tree.load", "")
        day = dt.datetime.fromtimestamp(now, UTC).date()
        db.create_partitions(conn, [day - dt.timedelta(days=1), day], ZoneInfo("UTC"))
        fever = {
            "ts": now - 5, "site": "gate-a", "station": "st-01", "session": 1, "seq": 7, "event_id": "ev-7",
            "decision": "deny_fever", "reason": "temperature_high\x1b[31m", "temperature_c": 38.6, "alarm": True,
        }  # fmt: skip
        rows = [
            EventRow(msg_id="m1", kind="screening", **fever),  # type: ignore[arg-type]
            EventRow(msg_id="m2", kind="alarm", **fever),  # type: ignore[arg-type]
            EventRow(msg_id="m3", ts=now - 3, site="gate-a", station="st-01", session=1, seq=8, kind="visit",
                     event_id="v-8", detail="outsider_vehicle", reason="in", alarm=False),
            EventRow(msg_id="m4", ts=now - 2, site="gate-a", station="st-01", session=1, seq=9, kind="screening",
                     event_id="ev-9", decision="pass", temperature_c=36.5),
        ]  # fmt: skip
        db.write_batch(conn, rows, [])


def notifier(url: str, clock: ManualClock, smtp_port: int | None, **kw: Any) -> Notifier:
    opts = NotifyOptions(
        public_url="https://centre.example",
        webhook_secret=SECRET,
        smtp=SmtpServer("127.0.0.1", smtp_port) if smtp_port else None,
        **{"escalate_after_s": 300, "retry_initial_s": 5, "retry_max_s": 60, **kw},
    )
    n = Notifier(url, opts, clock=clock.wall)  # sends at the clock's time: a retry waits until the test advances it
    n.open()
    return n


def rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with db.connect(url, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


# --- pure parts ------------------------------------------------------------------------------------


def test_responders_are_validated_naming_the_key_the_value_and_what_is_allowed() -> None:
    good = parse_tree(tree_text("https://hooks.example"))
    assert not isinstance(good, TreeError)
    nodes = good.nodes()
    assert [r.name for r in nodes["east/g1/gate"].responders] == ["门岗"]
    assert nodes["east/g1/gate"].responders[0].email == "gate@example.org"
    assert [n.path for n in good.chain("east/g1/gate")] == ["east/g1/gate", "east/g1", "east", ""]
    assert [n.path for n in good.chain("nowhere")] == [""]
    bad = parse_tree(
        '[towns.t]\nname = "t"\nresponders = [{name = "a", webhook = "ftp://x"}, {name = "b"}, '
        '{name = "c", email = "not-an-address"}, {name = "\\u0007", email = "x@y.org"}, {name = "e", email = "e@x.org", pager = 1}, "x"]\n'
        '[district]\nresponders = "all"\n'
    )
    assert isinstance(bad, TreeError)
    text = "\n".join(bad.problems)
    assert "towns.t.responders[0].webhook = 'ftp://x': expected an http(s) URL" in text
    assert "towns.t.responders[1]: expected webhook and/or email" in text
    assert "towns.t.responders[2].email = 'not-an-address': expected an e-mail address" in text
    assert "towns.t.responders[3].name = '\\x07': expected text" in text
    assert "towns.t.responders[4].pager: unknown key (allowed: email, name, webhook)" in text
    assert "towns.t.responders[5] = 'x': expected a table" in text
    assert "district.responders = 'all': expected a list" in text


def test_ack_tokens_are_signed_and_expire_and_any_input_gets_a_verdict() -> None:
    token = make_token(b"k" * 32, 42, "门岗", expires=1000)
    assert check_token(b"k" * 32, token, now=999) == (42, "门岗")
    assert check_token(b"k" * 32, token, now=1001) == "expired"
    assert check_token(b"other-key" * 4, token, now=999) == "bad_signature"
    body, sig = token.split(".")
    forged = make_token(b"k" * 32, 43, "门岗", expires=1000).split(".")[0] + "." + sig
    assert check_token(b"k" * 32, forged, now=999) == "bad_signature"
    for junk in (None, 5, "", ".", "a.b.c", "x" * 5000, "%%%.%%%", body + "." + "A" * 43):
        assert isinstance(check_token(b"k" * 32, junk, now=0), str)
    assert parse_smtp("mail.example:25") == SmtpServer("mail.example", 25, "plain")
    for bad in ("mail.example", ":25", "h:0", "h:99999", "h:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_smtp(bad)
    assert plain("a\r\nBcc: x@y\x00z") == "aBcc: x@yz"


def test_an_email_is_plain_text_one_value_per_line() -> None:
    subject, text = email_text(
        {
            "kind": "alarm", "site": "gate-a", "station": "st-01", "place": "区 / 镇\nBcc: evil@x.org",
            "event_ts": 0.0, "summary": {"reason": "<b>hi</b>\r\nX-Injected: 1"}, "escalations": 0, "level_name": None,
            "ack_url": "https://centre.example/ack/t.s",
        }
    )  # fmt: skip
    assert subject == "[checkpoint] Alarm: gate-a/st-01"
    assert "Place: 区 / 镇Bcc: evil@x.org" in text
    assert "reason: <b>hi</b>X-Injected: 1" in text  # plain text: no markup is interpreted, no line is added
    assert "\nX-Injected" not in text and "\nBcc" not in text


# --- against the real parts ------------------------------------------------------------------------


@pytest.mark.slow
def test_alarm_and_outsider_reach_the_checkpoint_once_across_two_replicas_then_escalate_until_acknowledged(
    pg_url: str, hooks: Webhooks, smtp: tuple[Mailbox, int]
) -> None:
    box, port = smtp
    now = time.time()
    clock = ManualClock(wall=now)
    seed(pg_url, hooks.url, now)
    one, two = notifier(pg_url, clock, port), notifier(pg_url, clock, port)

    def both() -> None:  # the two replicas' rounds at the same moment
        threads = [threading.Thread(target=n.cycle) for n in (one, two)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    both()
    both()
    notices = rows(pg_url, "SELECT kind, ref, level_path FROM centre_notices ORDER BY kind")
    assert notices == [("alarm", "ev-7", "east/g1/gate"), ("outsider", "v-8", "east/g1/gate")]  # the pass is not news
    # The checkpoint's responder: one webhook and one e-mail per notice, whoever sent it.
    assert sorted((h["path"], h["kind"]) for h in hooks.received) == [("/gate", "alarm"), ("/gate", "outsider")]
    assert hooks.bad_signatures == 0
    assert sorted(str(m["To"]) for m in box.messages) == ["门岗 <gate@example.org>"] * 2
    fever_hook = next(h for h in hooks.received if h["kind"] == "alarm")
    assert fever_hook["summary"] == {"decision": "deny_fever", "reason": "temperature_high[31m", "temperature_c": pytest.approx(38.6)}
    assert fever_hook["place"] == "测试区 / 城东街道 / 网格一 / 东门卡口" and fever_hook["responder"] == "门岗"
    fever_mail = next(m for m in box.messages if "Alarm" in str(m["Subject"]))
    assert fever_mail.get_content_type() == "text/plain" and not fever_mail.is_multipart()
    body = fever_mail.get_content()
    assert "temperature_high[31m" in body and "\x1b" not in body
    mail_link = next(line for line in body.splitlines() if line.startswith("https://centre.example/ack/"))
    stats = [one.stats(), two.stats()]
    assert sum(s["sent"] for s in stats) == 4 and sum(s["notices"] for s in stats) == 2

    # Nobody acknowledged: after escalate_after_s the grid is told (e-mail), still once.
    clock.advance(301)
    both()
    assert sorted(str(m["To"]) for m in box.messages).count("网格长 <grid@example.org>") == 2
    assert rows(pg_url, "SELECT kind, level_path, escalations FROM centre_notices ORDER BY kind") == [
        ("alarm", "east/g1", 1),
        ("outsider", "east/g1", 1),
    ]

    # The gate's responder opens the link from the e-mail on the centre's web (a scanner's GET changes nothing)
    # and presses the button: who and when are recorded.
    app = _ack_app(one)
    link = urllib.parse.urlparse(mail_link).path
    with TestClient(app) as client:
        page = client.get(link)
        assert page.status_code == 200 and "not acknowledged yet" in page.text and '<form method="post">' in page.text
        assert rows(pg_url, "SELECT count(*) FROM centre_notices WHERE acked_at IS NOT NULL") == [(0,)]
        answer = client.post(link)
        assert answer.status_code == 200 and "Acknowledged: Alarm at gate-a/st-01" in answer.text and "responder:门岗" in answer.text
        again = client.post(link)
        assert again.status_code == 200 and "Already acknowledged" in again.text
        assert "Already acknowledged" in client.get(link).text and "<form" not in client.get(link).text
        assert client.get("/ack/forged.token").status_code == 404
        assert client.post("/ack/forged.token").status_code == 404
    acked = rows(pg_url, "SELECT kind, acked_by, acked_at IS NOT NULL, escalate_at FROM centre_notices WHERE acked_at IS NOT NULL")
    assert acked == [("alarm", "responder:门岗", True, None)]
    assert rows(pg_url, "SELECT actor, action, target FROM centre_audit WHERE action = 'notify.ack'") == [
        ("responder:门岗", "notify.ack", "gate-a/st-01/alarm")
    ]
    with db.connect(pg_url, autocommit=True) as conn:  # the big screen's alarm queue shows who acknowledged it
        queue = screen.alarms(conn, dt.datetime.fromtimestamp(now - 3600, UTC))
    assert [(a["event_id"], a["state"], a["ack_by"]) for a in queue] == [("ev-7", "acknowledged", "responder:门岗")]

    # Another escalate_after_s: only the outsider (not acknowledged) goes up to the town; then the district.
    clock.advance(301)
    both()
    assert sorted((h["path"], h["kind"]) for h in hooks.received if h["path"] == "/town") == [("/town", "outsider")]
    clock.advance(301)
    both()
    assert [str(m["To"]) for m in box.messages if "district" in str(m["To"])] == ["区值班 <district@example.org>"]
    assert "Outsider" in str(next(m for m in box.messages if "district" in str(m["To"]))["Subject"])
    clock.advance(3000)
    both()  # nowhere further
    assert rows(pg_url, "SELECT kind, level_path, escalations, escalate_at FROM centre_notices ORDER BY kind") == [
        ("alarm", "east/g1", 1, None),
        ("outsider", "", 3, None),
    ]
    sends = rows(pg_url, "SELECT state, count(*) FROM centre_notify_sends GROUP BY 1")
    assert dict(sends) == {"sent": 8}  # the gate: 2 notices × 2 channels; the grid: 2 e-mails; the town, the district: 1 each
    one.stop()
    two.stop()


@pytest.mark.slow
def test_each_level_escalates_after_its_own_delay_and_a_node_without_one_takes_its_ancestors(pg_url: str, hooks: Webhooks) -> None:
    now = time.time()
    clock = ManualClock(wall=now)
    seed(pg_url, hooks.url, now)
    text = tree_text(hooks.url)
    for header, minutes in (("[towns.east]\n", 15), ("[towns.east.grids.g1]\n", 5)):  # the gate and the district set none
        text = text.replace(header, f"{header}escalate_after_min = {minutes}\n")
    with db.connect(pg_url, autocommit=True) as conn:
        save_tree(conn, 1, text, "chief", "admin", "tree.edit", "")
    n = notifier(pg_url, clock, None, escalate_after_s=600)  # the centre's --escalate-after: 10 min

    def where() -> set[tuple[str, int, float | None]]:
        """Return each notice's level, escalations and seconds from now to its escalate_at (the alarm and the outsider move alike)."""
        got = rows(pg_url, "SELECT level_path, escalations, extract(epoch FROM escalate_at)::float8 FROM centre_notices")
        assert len(got) == 2
        return {(level, count, None if at is None else round(at - clock.wall(), 3)) for level, count, at in got}

    n.cycle()
    assert where() == {("east/g1/gate", 0, 300.0)}, "the gate sets none: its grid's 5 min, not the centre's 10"
    clock.advance(299)
    n.cycle()
    assert where() == {("east/g1/gate", 0, 1.0)}
    clock.advance(2)
    n.cycle()
    assert where() == {("east/g1", 1, 300.0)}, "the grid's own 5 min"
    clock.advance(301)
    n.cycle()
    assert where() == {("east", 2, 900.0)}, "the town's 15 min"
    assert sorted(h["kind"] for h in hooks.received if h["path"] == "/town") == ["alarm", "outsider"]
    clock.advance(600)
    n.cycle()
    assert where() == {("east", 2, 300.0)}, "still the town's after 10 min"
    clock.advance(301)
    n.cycle()
    assert where() == {("", 3, None)}, "the district: nowhere further"
    n.stop()


def _ack_app(n: Notifier) -> Any:
    from starlette.applications import Starlette

    return Starlette(routes=[ack_route(n)])


def offline_status(url: str, at: float) -> None:
    """Store gate-a/st-01's retained status ``offline`` as the fleet subscriber would, heard at ``at``."""
    update = fl.parse_state("checkpoint/v1", "checkpoint/v1/gate-a/st-01/status", b'{"state": "offline", "session": 1}', at)
    assert isinstance(update, fl.StateUpdate)
    with db.connect(url, autocommit=True) as conn:
        fl.ensure_fleet_schema(conn)
        fl.write_updates(conn, [update])


@pytest.mark.slow
def test_a_checkpoint_offline_over_10_min_is_sent_once_and_failed_sends_are_retried_with_backoff(
    pg_url: str, hooks: Webhooks, smtp: tuple[Mailbox, int]
) -> None:
    box, port = smtp
    now = time.time()
    clock = ManualClock(wall=now)
    with db.connect(pg_url, autocommit=True) as conn:
        ensure_screen_schema(conn)
        save_tree(conn, 0, tree_text(hooks.url), "chief", "admin", "tree.load", "")
    offline_status(pg_url, now)
    n = notifier(pg_url, clock, port)
    clock.advance(599)
    n.cycle()
    assert rows(pg_url, "SELECT count(*) FROM centre_notices") == [(0,)]  # not yet 10 minutes
    clock.advance(2)
    hooks.fail, box.refuse = 2, 1  # the webhook answers 500 twice, the SMTP server refuses once
    n.cycle()
    assert rows(pg_url, "SELECT kind, site, station, summary->>'state' FROM centre_notices") == [("offline", "gate-a", "st-01", "offline")]
    assert hooks.received == [] and box.messages == []
    assert n.stats()["send_errors"] == 2
    assert dict(rows(pg_url, "SELECT channel, extract(epoch FROM next_at)::float8 - %s FROM centre_notify_sends", clock.wall())) == {
        "webhook": pytest.approx(5, abs=0.01),  # retry_initial_s
        "email": pytest.approx(5, abs=0.01),
    }
    n.cycle()  # not due yet: nothing is tried
    assert n.stats()["send_errors"] == 2
    clock.advance(5)
    n.cycle()  # the e-mail goes; the webhook fails again and waits twice as long
    assert [str(m["To"]) for m in box.messages] == ["门岗 <gate@example.org>"] and "Checkpoint offline" in str(box.messages[0]["Subject"])
    clock.advance(9)
    n.cycle()
    assert hooks.received == []
    clock.advance(1)
    n.cycle()
    assert [(h["kind"], h["summary"]["state"]) for h in hooks.received] == [("offline", "offline")]
    assert n.stats()["errors"] == {"http_500": 2, "smtp_SMTPDataError": 1}
    assert rows(pg_url, "SELECT channel, state, attempts FROM centre_notify_sends ORDER BY channel") == [
        ("email", "sent", 2),
        ("webhook", "sent", 3),
    ]
    n.cycle()
    assert rows(pg_url, "SELECT count(*) FROM centre_notices") == [(1,)]  # one notice per offline spell


@pytest.mark.slow
def test_a_send_that_never_succeeds_is_given_up_counted_and_the_service_goes_on(pg_url: str, hooks: Webhooks) -> None:
    now = time.time()
    clock = ManualClock(wall=now)
    dead = f"http://127.0.0.1:{free_port()}"  # nobody listens: connection refused
    seed(pg_url, dead, now)
    n = notifier(pg_url, clock, smtp_port=free_port(), max_attempts=3)  # no SMTP server there either
    for _ in range(4):
        n.cycle()
        clock.advance(60)
    stats = n.stats()
    assert stats["cycle_errors"] == 0 and stats["failed"] >= 4  # the gate's webhook and e-mail, for both notices
    assert set(stats["errors"]) == {"webhook_URLError", "smtp_ConnectionRefusedError"}
    assert rows(pg_url, "SELECT DISTINCT state, attempts FROM centre_notify_sends WHERE level_path = 'east/g1/gate'") == [("failed", 3)]


@pytest.mark.slow
def test_other_systems_get_an_mqtt_message(pg_url: str, tmp_path: Path, hooks: Webhooks) -> None:
    now = time.time()
    seed(pg_url, hooks.url, now)
    with mosquitto_broker(tmp_path) as broker:
        got: list[tuple[str, dict[str, Any]]] = []
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        sub.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("checkpoint/v1/centre/notify/#", qos=1)
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        n = notifier(pg_url, ManualClock(wall=now), None, interval_s=0.05, retry_initial_s=0.05)
        n.clock = time.time  # the service's own clock: its retries come due by themselves
        n.mqtt = MqttNotices(broker.url)
        n.start()  # its own thread; sends before the MQTT link is up fail, are counted and retried
        try:
            wait_until(lambda: len(got) == 2, what="two notices over MQTT")
            wait_until(lambda: len(hooks.received) == 2, what="the gate's two webhooks")
        finally:
            n.stop()
            sub.loop_stop()
    topics = sorted(t for t, _ in got)
    assert topics == ["checkpoint/v1/centre/notify/alarm/gate-a/st-01", "checkpoint/v1/centre/notify/outsider/gate-a/st-01"]
    body = dict(got)["checkpoint/v1/centre/notify/alarm/gate-a/st-01"]
    assert body["checkpoint"] == "east/g1/gate" and body["ack_url"].startswith("https://centre.example/ack/")


def test_the_centre_serves_ack_links_when_notifications_are_configured(pg_url: str, tmp_path: Path) -> None:
    key = tmp_path / "notify.key"
    key.write_text("a-webhook-secret-of-enough-length\n")
    opts = CentreOptions(mqtt_url="mqtt://127.0.0.1:1", db_url=pg_url, notify_secret_file=str(key), smtp="127.0.0.1:2525")
    centre = Centre(opts)
    with db.connect(pg_url, autocommit=True) as conn:
        ensure_screen_schema(conn)
    centre.notifier.open()
    assert centre.notifier.opts.smtp == SmtpServer("127.0.0.1", 2525) and centre.notifier.opts.public_url == "http://127.0.0.1:8090"
    with TestClient(centre.app) as client:
        answer = client.post("/ack/" + make_token(centre.notifier.secret, 99, "x", time.time() + 60))
        assert answer.status_code == 404 and "No such notice" in answer.text
        assert client.get("/ack/" + make_token(centre.notifier.secret, 99, "x", time.time() - 1)).status_code == 410
        assert client.get("/healthz").status_code in (200, 503)  # the rest of the centre is still there
    with pytest.raises(ValueError, match="--smtp 'nohost': expected HOST:PORT"):
        Centre(CentreOptions(mqtt_url="mqtt://127.0.0.1:1", db_url=pg_url, notify_secret_file=str(key), smtp="nohost"))
    with pytest.raises(ValueError, match="--notify-secret-file .*: cannot read it"):
        Centre(CentreOptions(mqtt_url="mqtt://127.0.0.1:1", db_url=pg_url, notify_secret_file=str(tmp_path / "none")))
    key.write_text("short")
    with pytest.raises(ValueError, match="--notify-secret-file .*: at least 16 bytes"):
        Centre(opts)
    result = CliRunner().invoke(centre_cli, ["run", "--mqtt", "mqtt://127.0.0.1:1", "--db", pg_url, "--smtp", "h:25"])
    assert result.exit_code == 2 and "--notify-secret-file" in result.output


@pytest.mark.slow
def test_an_alarm_handled_on_the_screen_or_a_station_back_online_is_not_escalated(pg_url: str, hooks: Webhooks) -> None:
    now = time.time()
    clock = ManualClock(wall=now)
    seed(pg_url, hooks.url, now)
    offline_status(pg_url, now - 700)
    n = notifier(pg_url, clock, None)
    n.cycle()
    assert rows(pg_url, "SELECT kind, level_path FROM centre_notices ORDER BY kind") == [
        ("alarm", "east/g1/gate"),
        ("offline", "east/g1/gate"),
        ("outsider", "east/g1/gate"),
    ]
    with db.connect(pg_url, autocommit=True) as conn:
        screen.acknowledge(conn, "gate-a", "st-01", "ev-7", "duty", "tracer")  # a tracer on the big screen
    update = fl.parse_state("checkpoint/v1", "checkpoint/v1/gate-a/st-01/status", b'{"state": "online", "session": 2}', now + 1)
    assert isinstance(update, fl.StateUpdate)
    with db.connect(pg_url, autocommit=True) as conn:
        fl.write_updates(conn, [update])
    clock.advance(301)
    n.cycle()
    assert rows(pg_url, "SELECT kind, level_path, escalations, acked_by, escalate_at IS NULL FROM centre_notices ORDER BY kind") == [
        ("alarm", "east/g1/gate", 0, "screen:duty", True),
        ("offline", "east/g1/gate", 0, None, True),
        ("outsider", "east/g1", 1, None, False),
    ]
