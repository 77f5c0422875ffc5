"""Alarms reach the grid's staff where they are: the district tree's responders, by webhook, e-mail and MQTT.

What is notified (issue 19 item 3), each once per cause (``centre_notices``, unique by kind, station
and ``ref``):

* ``alarm`` — a fever/denied/alarm event (the screen's alarm predicate); ``ref`` is its ``event_id``;
* ``outsider`` — a vehicle visit of kind ``outsider_vehicle`` (not resident, not registered);
* ``offline`` — a station whose retained status is ``offline`` or ``stopped`` for longer than
  ``offline_after_s`` (600 s); ``ref`` is when that spell began (unix seconds), so each spell once.

Routing: the station's checkpoint in the saved tree (``centre_tree``), then up its chain (checkpoint →
grid → town → district); the first node with ``responders`` gets it, each responder by their webhook
and/or e-mail, and one MQTT message goes to ``<prefix>/centre/notify/<kind>/<site>/<station>`` for other
systems. An unplaced station starts at the district. Whoever opens their link acknowledges it (``GET
/ack/<token>``: a token signed with the centre's ``notify_secret``, naming the notice and the responder,
expiring after ``ack_ttl_s``); the centre records who and when (``centre_notices``, ``centre_audit``).
When nobody has acknowledged in time after a level was told, the next node up with responders is told
too; after the district nothing further. In time: the told node's ``escalate_after_min`` in the tree, else
its nearest ancestor's, else ``escalate_after_s`` (:meth:`Tree.escalate_after_s`).

Across replicas: detection inserts with ``ON CONFLICT DO NOTHING`` (a second replica finds the notice
there); escalation takes the notice row with ``FOR UPDATE SKIP LOCKED``; every send is a row
(``centre_notify_sends``, unique per notice, level, responder and channel) claimed with a lease in its
own committed transaction before anything leaves the process, so two replicas never both send it.
A replica dying between sending and recording it sends again after the lease (at least once then;
otherwise exactly once). A failed send (webhook down, SMTP refused) is retried with back-off
(station/ops/backoff.py) up to ``max_attempts`` and counted; nothing here raises out of the loop.

Webhooks get ``POST`` JSON with ``X-Checkpoint-Timestamp`` and ``X-Checkpoint-Signature: sha256=<hex>``,
the HMAC-SHA256 under the webhook secret of ``<timestamp>.<body>``. E-mails are ``text/plain`` only:
every value is plain text, control characters removed. They go through :class:`SmtpServer`: plain,
STARTTLS or TLS, the certificate and host name checked, with a login only over TLS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import secrets
import smtplib
import ssl
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from station.centre import db
from station.centre.screen import ALARM_WHERE, load_tree_text
from station.centre.tree import Node, Tree, TreeError, parse_tree
from station.ops.backoff import Backoff

log = logging.getLogger("station.centre.notify")

KINDS = ("alarm", "outsider", "offline")
CHANNELS = ("webhook", "email", "mqtt")
NOTIFY_LOCK = 0x4E_4F_54_49_46_59  # "NOTIFY": one replica at a time scans for new causes
LOOKBACK_S = 600  # the first scan of a new database looks back this far (older history is not news)
RECEIVED_MARGIN_S = 30  # re-read arrivals this far before the watermark: a batch committed late has an earlier received_at
TEXT_MAX = 200

SCHEMA = """
CREATE TABLE IF NOT EXISTS centre_notices (
  id bigserial PRIMARY KEY,
  kind text NOT NULL CHECK (kind IN ('alarm', 'outsider', 'offline')),
  site text NOT NULL, station text NOT NULL,
  ref text NOT NULL,                    -- event_id, or the offline spell's start
  event_ts timestamptz NOT NULL,
  summary jsonb NOT NULL,               -- typed fields of the cause (decision, reason, temperature, …)
  checkpoint text,                      -- the station's checkpoint path when detected (NULL: unassigned)
  level_path text,                      -- the node whose responders were told last (NULL: no node has any)
  escalations integer NOT NULL DEFAULT 0,
  escalate_at timestamptz,              -- NULL: acknowledged, or nowhere further up
  created_at timestamptz NOT NULL,
  acked_by text, acked_at timestamptz,
  UNIQUE (kind, site, station, ref)
);
CREATE INDEX IF NOT EXISTS centre_notices_escalate ON centre_notices (escalate_at) WHERE escalate_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS centre_notify_sends (
  id bigserial PRIMARY KEY,
  notice_id bigint NOT NULL REFERENCES centre_notices (id) ON DELETE CASCADE,
  level_path text NOT NULL,
  responder text NOT NULL,
  channel text NOT NULL CHECK (channel IN ('webhook', 'email', 'mqtt')),
  address text NOT NULL,
  state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed', 'skipped')),
  attempts integer NOT NULL DEFAULT 0,
  next_at timestamptz NOT NULL,
  lease_until timestamptz, claimed_by text,
  sent_at timestamptz, last_error text,
  UNIQUE (notice_id, level_path, responder, channel)
);
CREATE INDEX IF NOT EXISTS centre_notify_sends_due ON centre_notify_sends (next_at) WHERE state = 'pending';
"""


# --- the acknowledge link ------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: bytes, notice_id: int, responder: str, expires: float) -> str:
    """Return the signed acknowledge token for ``responder`` of notice ``notice_id``, valid until ``expires`` (unix s)."""
    body = _b64(json.dumps({"n": notice_id, "r": responder, "e": int(expires)}, separators=(",", ":"), ensure_ascii=False).encode())
    sig = _b64(hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest())
    return f"{body}.{sig}"


def check_token(secret: bytes, token: Any, now: float) -> tuple[int, str] | str:
    """Return ``(notice_id, responder)`` of a valid token, else why not (``bad_token``, ``bad_signature``, ``expired``); total."""
    try:
        if not isinstance(token, str) or len(token) > 2000 or token.count(".") != 1:
            return "bad_token"
        body, sig = token.split(".")
        want = _b64(hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest())
        if not hmac.compare_digest(want, sig):
            return "bad_signature"
        claims = json.loads(_unb64(body))
        notice, responder, expires = claims["n"], claims["r"], claims["e"]
        if not (isinstance(notice, int) and isinstance(responder, str) and isinstance(expires, int)):
            return "bad_token"
        if now > expires:
            return "expired"
        return notice, responder
    except (ValueError, KeyError, TypeError, UnicodeError):
        return "bad_token"


def sign_webhook(secret: bytes, timestamp: str, body: bytes) -> str:
    """Return the ``X-Checkpoint-Signature`` value: ``sha256=`` and the HMAC of ``<timestamp>.<body>``."""
    return "sha256=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def plain(value: Any, limit: int = TEXT_MAX) -> str:
    """Return ``value`` as one line of plain text: control characters removed, at most ``limit`` characters."""
    text = "" if value is None else str(value)
    return "".join(c for c in text if unicodedata.category(c)[0] != "C")[:limit]


# --- senders ---------------------------------------------------------------------------------------


class SendError(Exception):
    """A send that did not go out (the reason is kept on the send's row and counted)."""


def post_webhook(url: str, body: bytes, secret: bytes, now: float, timeout_s: float = 5.0) -> None:
    """POST ``body`` (JSON) to ``url`` signed with ``secret``; raise :class:`SendError` unless answered 2xx."""
    stamp = str(int(now))
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "checkpoint-centre-notify",
            "X-Checkpoint-Timestamp": stamp,
            "X-Checkpoint-Signature": sign_webhook(secret, stamp, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 (http(s) only: tree.WEBHOOK)
            status = answer.status
    except urllib.error.HTTPError as exc:
        raise SendError(f"http_{exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SendError(f"webhook_{type(exc).__name__}: {plain(getattr(exc, 'reason', exc), 120)}") from None
    if not 200 <= status < 300:
        raise SendError(f"http_{status}")


Security = Literal["plain", "starttls", "tls"]
SMTP_SCHEMES: dict[str, tuple[Security, int]] = {"smtp": ("plain", 25), "smtp+starttls": ("starttls", 587), "smtps": ("tls", 465)}
SMTP_FORMS = "HOST:PORT, smtp://HOST[:PORT], smtp+starttls://[USER@]HOST[:PORT] or smtps://[USER@]HOST[:PORT] (a port 1-65535)"


@dataclass(frozen=True)
class SmtpServer:
    """Where the e-mails go: the relay, how the link is protected (``plain``, ``starttls``, ``tls``) and whom to log in as."""

    host: str
    port: int
    security: Security = "plain"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, a log line or an error
    ca_file: str | None = None  # the CA bundle the server is verified against; None: the system's default trust

    def ssl_context(self) -> ssl.SSLContext:
        """Return the TLS context: the server's certificate and host name checked against ``ca_file`` or the default trust."""
        return ssl.create_default_context(cafile=self.ca_file)


def send_email(smtp: SmtpServer, sender: str, to_name: str, to_addr: str, subject: str, text: str, timeout_s: float = 10.0) -> None:
    """Send a ``text/plain`` e-mail over SMTP; raise :class:`SendError` when the server refuses or cannot be reached."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = formataddr((plain(to_name, 80), to_addr))
    msg["Subject"] = plain(subject)
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@checkpoint-centre>"
    msg.set_content(text, subtype="plain", charset="utf-8")
    try:
        if smtp.security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=timeout_s, context=smtp.ssl_context())
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout_s)
        with client:
            if smtp.security == "starttls":
                client.ehlo()
                client.starttls(context=smtp.ssl_context())  # a server without STARTTLS raises: never falls back to clear text
                client.ehlo()
            if smtp.username is not None:
                client.login(smtp.username, smtp.password or "")
            client.send_message(msg)
    except (smtplib.SMTPException, OSError, UnicodeError) as exc:  # ssl.SSLError (certificate, handshake) is an OSError
        reason = plain(exc, 120)
        if smtp.password:
            reason = reason.replace(smtp.password, "***")  # a server echoing it back must not put it in the log
        raise SendError(f"smtp_{type(exc).__name__}: {reason}") from None


def parse_smtp(value: str, *, password: str | None = None, ca_file: str | None = None) -> SmtpServer:
    """Return the :class:`SmtpServer` of ``--smtp`` (``HOST:PORT`` or a URL); raise ``ValueError`` naming what is allowed.

    The password never comes from the URL (it would show in the process list): it is ``password``,
    read from ``--smtp-password-file``, and only ever goes over TLS.
    """
    security: Security
    default_port: int | None
    scheme, sep, rest = value.partition("://")
    if not sep:  # the original form: plain SMTP, no login
        if "@" in value:
            raise ValueError(f"--smtp {value!r}: a user name needs smtp+starttls://USER@HOST[:PORT] or smtps://USER@HOST[:PORT]")
        security, default_port, userinfo, hostport = "plain", None, "", value
    else:
        if scheme.lower() not in SMTP_SCHEMES:
            raise ValueError(f"--smtp {value!r}: expected {SMTP_FORMS}")
        security, default_port = SMTP_SCHEMES[scheme.lower()]
        if rest.endswith("/"):
            rest = rest[:-1]
        userinfo, at, hostport = rest.rpartition("@")
        if at and ":" in userinfo:
            shown = f"{scheme}://{userinfo.partition(':')[0]}:***@{hostport}"
            raise ValueError(f"--smtp {shown!r}: no password in the URL (it shows in the process list); put it in --smtp-password-file")
        if at and not userinfo:
            raise ValueError(f"--smtp {value!r}: empty user name; expected {SMTP_FORMS}")
    if hostport.startswith("["):  # an IPv6 address
        host, bracket, port_text = hostport[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ValueError(f"--smtp {value!r}: expected {SMTP_FORMS}")
        port_text = port_text[1:]
    else:
        host, colon, port_text = hostport.rpartition(":")
        if not colon:
            host, port_text = hostport, ""
    if (
        not host
        or any(c in host for c in "/?#@[] ") or any(unicodedata.category(c)[0] in "CZ" for c in host)
        or (not port_text and default_port is None)
        or (port_text and not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536))
    ):  # fmt: skip
        raise ValueError(f"--smtp {value!r}: expected {SMTP_FORMS}")
    port = int(port_text) if port_text else int(default_port or 0)
    try:
        username = urllib.parse.unquote(userinfo, errors="strict") if userinfo else None
    except UnicodeDecodeError:
        raise ValueError(f"--smtp {value!r}: the user name's percent-encoding is not UTF-8") from None
    if username is not None and security == "plain":
        raise ValueError(
            f"--smtp {value!r}: a user name over plain SMTP would send its password in clear; "
            "use smtp+starttls://USER@HOST[:PORT] or smtps://USER@HOST[:PORT]"
        )
    if username is not None and not (username.isascii() and username.isprintable()):  # smtplib logs in with ASCII only
        raise ValueError(f"--smtp {value!r}: the user name must be printable ASCII (percent-encoded where needed)")
    if password is not None and username is None:
        raise ValueError(
            f"--smtp-password-file: --smtp {value!r} names no user to log in as (smtp+starttls://USER@HOST or smtps://USER@HOST)"
        )
    if password is not None and not (password.isascii() and password.isprintable()):
        raise ValueError("--smtp-password-file: the password must be printable ASCII (smtplib logs in with ASCII only)")
    if username is not None and not password:
        raise ValueError(f"--smtp {value!r}: logging in as {username!r} needs its password in --smtp-password-file")
    if ca_file is not None and security == "plain":
        raise ValueError(f"--smtp-ca: --smtp {value!r} is plain SMTP (no TLS); use smtp+starttls:// or smtps://")
    return SmtpServer(host=host, port=port, security=security, username=username, password=password, ca_file=ca_file)


class MqttNotices:
    """Publishes notices on ``<prefix>/centre/notify/…`` at QoS 1 (a paho MQTT 5 client, reconnecting by itself)."""

    def __init__(self, mqtt_url: str, *, username: str | None = None, password: str | None = None, tls_ca: str | None = None) -> None:
        from station.ops.mqtt_url import parse_mqtt_url

        self.endpoint = parse_mqtt_url(mqtt_url).with_credentials(username, password)
        self.tls_ca = tls_ca
        self.client: Any = None

    def start(self) -> None:
        """Connect in the background."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"centre-notify-{uuid.uuid4().hex[:12]}", protocol=MQTTProtocolVersion.MQTTv5
        )
        if self.endpoint.username is not None:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        if self.endpoint.tls:
            client.tls_set(ca_certs=self.tls_ca)
        client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
        client.loop_start()
        self.client = client

    def publish(self, topic: str, body: bytes) -> None:
        """Publish and wait for the broker's acknowledgement; raise :class:`SendError` when not connected or not acknowledged."""
        if self.client is None or not self.client.is_connected():
            raise SendError("mqtt_not_connected")  # not queued: a retry later, never a second copy from paho's queue
        info = self.client.publish(topic, body, qos=1)
        try:
            info.wait_for_publish(timeout=5.0)
        except (RuntimeError, ValueError) as exc:
            raise SendError(f"mqtt_{plain(exc, 80)}") from None
        if not info.is_published():
            raise SendError("mqtt_timeout")

    def stop(self) -> None:
        """Disconnect."""
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


# --- the notifier ----------------------------------------------------------------------------------


@dataclass
class NotifyOptions:
    """How notifications are sent: where the acknowledge links point, the SMTP server, timings, retries."""

    public_url: str  # the centre's web as responders reach it (ack links: <public_url>/ack/<token>)
    webhook_secret: bytes  # the HMAC key webhooks are signed with (shared with the receivers)
    smtp: SmtpServer | None = None  # parse_smtp(--smtp, …)
    mail_from: str = "checkpoint-centre@localhost"
    prefix: str = "checkpoint/v1"
    escalate_after_s: float = 600.0
    offline_after_s: float = 600.0
    ack_ttl_s: float = 86400.0
    interval_s: float = 2.0
    batch: int = 8  # sends claimed per round
    lease_s: float = 180.0  # longer than a batch can take (8 × the 10 s SMTP or 5 s webhook timeout, plus margin)
    max_attempts: int = 8
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0


class Notifier:
    """Finds what to notify, sends it to the tree's responders, escalates what nobody acknowledged; one per replica.

    ``clock`` is the wall clock (unix seconds) every deadline is reckoned on: escalation, retries,
    leases, token expiry, offline spells. :meth:`cycle` does one round; :meth:`start` runs rounds
    every ``interval_s`` in a thread until :meth:`stop`.
    """

    def __init__(
        self,
        db_url: str,
        options: NotifyOptions,
        *,
        mqtt: MqttNotices | None = None,
        clock: Callable[[], float] = time.time,
        replica: str | None = None,
    ) -> None:
        self.db_url = db_url
        self.opts = options
        self.mqtt = mqtt
        self.clock = clock
        self.replica = replica or uuid.uuid4().hex[:12]
        self.secret = b""  # the ack-token key (centre_meta notify_secret), read by open()
        self.counts: dict[str, int] = {
            "notices": 0,
            "escalations": 0,
            "sent": 0,
            "send_errors": 0,
            "failed": 0,
            "skipped": 0,
            "acks": 0,
            "no_responders": 0,
            "cycle_errors": 0,
        }
        self.errors: dict[str, int] = {}  # send errors by reason
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._tree: tuple[int, Tree] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # lifecycle

    def open(self) -> None:
        """Create the tables when missing and read the ack-token key (made once, shared by replicas)."""
        with db.connect(self.db_url) as conn, conn.transaction():
            db.ddl_lock(conn)
            conn.execute(SCHEMA)
            conn.execute(
                "INSERT INTO centre_meta (key, value) VALUES ('notify_secret', %s) ON CONFLICT (key) DO NOTHING", (secrets.token_hex(32),)
            )
            row = conn.execute("SELECT value FROM centre_meta WHERE key = 'notify_secret'").fetchone()
        assert row is not None
        self.secret = bytes.fromhex(str(row[0]))

    def start(self) -> None:
        """Run :meth:`cycle` every ``interval_s`` in a thread."""
        if self.mqtt is not None:
            self.mqtt.start()
        self._thread = threading.Thread(target=self._run, name="centre-notify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread after its current round; close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.mqtt is not None:
            self.mqtt.stop()
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.cycle()
            self._stop.wait(self.opts.interval_s)

    def stats(self) -> dict[str, Any]:
        """Return the counters (notices, sends, errors by reason, acknowledgements)."""
        with self._lock:
            return {**self.counts, "errors": dict(self.errors)}

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + n

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = db.connect(self.db_url, autocommit=True)
        return self._conn

    def cycle(self) -> None:
        """Do one round: detect new causes, escalate what is due, send what is due; errors are counted, never raised."""
        for step in (self.detect, self.escalate, self.deliver):
            try:
                step()
            except (psycopg.Error, OSError) as exc:
                self._count("cycle_errors")
                log.warning("centre notify step=%s failed error=%s", step.__name__, plain(exc, 200))
                if self._conn is not None and self._conn.broken:
                    self._conn = None

    # the tree

    def tree(self, conn: psycopg.Connection[Any]) -> Tree | None:
        """Return the newest saved tree (parsed once per version); None if it does not parse."""
        version, text = load_tree_text(conn)
        if self._tree is None or self._tree[0] != version:
            parsed = parse_tree(text)
            if isinstance(parsed, TreeError):
                log.warning("centre notify: saved tree version %d does not parse: %s", version, parsed)
                return None
            self._tree = (version, parsed)
        return self._tree[1]

    @staticmethod
    def _levels(tree: Tree, checkpoint: str | None) -> list[Node]:
        """Return the nodes with responders from the checkpoint up to the district, nearest first."""
        return [n for n in tree.chain(checkpoint or "") if n.responders]

    # detection

    def detect(self) -> int:
        """Record every new cause once (alarms, outsider vehicles, stations offline too long) and queue its first sends."""
        conn = self._connection()
        now = self.clock()
        created = 0
        with conn.transaction():
            got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (NOTIFY_LOCK,)).fetchone()
            if not got or not got[0]:
                return 0  # another replica is scanning; its inserts are what this one would make
            tree = self.tree(conn)
            if tree is None:
                return 0
            row = conn.execute("SELECT value FROM centre_meta WHERE key = 'notify_received'").fetchone()
            since = float(row[0]) - RECEIVED_MARGIN_S if row else None
            top = conn.execute("SELECT extract(epoch FROM now())::float8").fetchone()
            assert top is not None
            db_now = float(top[0])
            since = db_now - LOOKBACK_S if since is None else since
            causes: list[tuple[str, str, str, str, float, dict[str, Any]]] = []
            for site, station, kind, event_id, ts, decision, reason, temp, detail in conn.execute(
                f"""SELECT DISTINCT ON (site, station, event_id, k) site, station, k, event_id, extract(epoch FROM ts)::float8,
                          decision, reason, temperature_c, detail
                   FROM (SELECT *, CASE WHEN kind = 'visit' THEN 'outsider' ELSE 'alarm' END AS k FROM events
                         WHERE received_at > to_timestamp(%(since)s) AND ts > to_timestamp(%(since)s) - interval '2 days'
                           AND event_id IS NOT NULL
                           AND (({ALARM_WHERE}) OR (kind = 'visit' AND detail = 'outsider_vehicle'))) e
                   ORDER BY site, station, event_id, k, kind DESC""",
                {"since": since},
            ).fetchall():
                summary = {"decision": decision, "reason": reason, "temperature_c": temp}
                if kind == "outsider":
                    summary = {"visit": detail, "direction": reason}
                clean = {k: plain(v, 80) if isinstance(v, str) else v for k, v in summary.items() if v is not None}
                causes.append((kind, site, station, event_id, ts, clean))
            for site, station, state, since_ts in conn.execute(
                """SELECT s.site, s.station, s.state, extract(epoch FROM coalesce(l.at, s.status_at))::float8
                   FROM station_status s
                   LEFT JOIN LATERAL (SELECT at FROM station_status_log g WHERE g.site = s.site AND g.station = s.station
                                      ORDER BY at DESC LIMIT 1) l ON true
                   WHERE s.state IN ('offline', 'stopped')"""
                if _has_table(conn, "station_status")
                else "SELECT NULL, NULL, NULL, NULL WHERE false"
            ).fetchall():
                if since_ts is not None and now - since_ts > self.opts.offline_after_s:
                    causes.append(
                        ("offline", site, station, str(int(since_ts)), since_ts, {"state": state, "offline_s": int(now - since_ts)})
                    )
            for kind, site, station, ref, ts, summary in causes:
                created += self._create(conn, tree, kind, site, station, ref, ts, summary, now)
            conn.execute(
                "INSERT INTO centre_meta (key, value) VALUES ('notify_received', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(db_now),),
            )
        return created

    def _create(
        self,
        conn: psycopg.Connection[Any],
        tree: Tree,
        kind: str,
        site: str,
        station: str,
        ref: str,
        ts: float,
        summary: dict[str, Any],
        now: float,
    ) -> int:
        checkpoint = tree.locate(site, station)
        levels = self._levels(tree, checkpoint)
        first = levels[0] if levels else None
        further = len(levels) > 1
        row = conn.execute(
            """INSERT INTO centre_notices (kind, site, station, ref, event_ts, summary, checkpoint, level_path, escalate_at, created_at)
               VALUES (%s, %s, %s, %s, to_timestamp(%s), %s, %s, %s, CASE WHEN %s THEN to_timestamp(%s) END, to_timestamp(%s))
               ON CONFLICT (kind, site, station, ref) DO NOTHING RETURNING id""",
            (kind, site, station, ref, ts, Jsonb(summary), checkpoint, first.path if first else None, further,
             now + tree.escalate_after_s(first.path if first else "", self.opts.escalate_after_s), now),
        ).fetchone()  # fmt: skip
        if row is None:
            return 0
        self._count("notices")
        if first is None:
            self._count("no_responders")
            log.warning("centre notify: no responders anywhere up the tree kind=%s site=%s station=%s", kind, site, station)
        self._queue(conn, int(row[0]), first, kind, site, station, now)
        log.info("centre notice id=%d kind=%s site=%s station=%s level=%s", row[0], kind, site, station, first.path if first else None)
        return 1

    def _queue(
        self, conn: psycopg.Connection[Any], notice: int, level: Node | None, kind: str, site: str, station: str, now: float
    ) -> None:
        """Add one send per responder and channel of ``level`` (and the MQTT message) to the queue."""
        rows: list[tuple[str, str, str]] = []
        if level is not None:
            for r in level.responders:
                if r.webhook:
                    rows.append((r.name, "webhook", r.webhook))
                if r.email:
                    rows.append((r.name, "email", r.email))
        if self.mqtt is not None:
            rows.append(("mqtt", "mqtt", f"{self.opts.prefix}/centre/notify/{kind}/{site}/{station}"))
        for responder, channel, address in rows:
            conn.execute(
                """INSERT INTO centre_notify_sends (notice_id, level_path, responder, channel, address, next_at)
                   VALUES (%s, %s, %s, %s, %s, to_timestamp(%s)) ON CONFLICT DO NOTHING""",
                (notice, level.path if level is not None else "", responder, channel, address, now),
            )

    # escalation

    def escalate(self) -> int:
        """Tell the next level up about every notice nobody acknowledged in time; return how many moved."""
        conn = self._connection()
        now = self.clock()
        moved = 0
        with conn.transaction():
            self._settled_elsewhere(conn, now)
            due = conn.execute(
                """SELECT id, kind, site, station, checkpoint, level_path, escalations FROM centre_notices
                   WHERE escalate_at <= to_timestamp(%s) AND acked_at IS NULL
                   ORDER BY escalate_at LIMIT 100 FOR UPDATE SKIP LOCKED""",
                (now,),
            ).fetchall()
            if not due:
                return 0
            tree = self.tree(conn)
            if tree is None:
                return 0
            for notice, kind, site, station, checkpoint, level_path, escalations in due:
                levels = self._levels(tree, checkpoint)
                paths = [n.path for n in levels]
                after = levels[paths.index(level_path) + 1 :] if level_path in paths else levels[1:]
                nxt = after[0] if after else None
                delay = tree.escalate_after_s(nxt.path, self.opts.escalate_after_s) if nxt else 0.0  # the newly told level's
                conn.execute(
                    """UPDATE centre_notices SET level_path = coalesce(%s, level_path), escalations = escalations + %s,
                         escalate_at = CASE WHEN %s THEN to_timestamp(%s) END WHERE id = %s""",
                    (nxt.path if nxt else None, 1 if nxt else 0, len(after) > 1, now + delay, notice),
                )
                if nxt is None:
                    continue
                self._queue(conn, notice, nxt, kind, site, station, now)
                moved += 1
                log.warning(
                    "centre notice escalated id=%d kind=%s site=%s station=%s from=%s to=%s after=%d",
                    notice, kind, site, station, level_path, nxt.path, escalations + 1,
                )  # fmt: skip
        self._count("escalations", moved)
        return moved

    def _settled_elsewhere(self, conn: psycopg.Connection[Any], now: float) -> None:
        """Stop escalating what was settled without a link: an alarm handled on the big screen, a station back online."""
        acked = conn.execute(
            """UPDATE centre_notices n SET acked_by = 'screen:' || a.ack_by, acked_at = a.ack_at, escalate_at = NULL
               FROM centre_alarms a
               WHERE n.kind = 'alarm' AND n.acked_at IS NULL AND n.escalate_at <= to_timestamp(%s)
                 AND a.site = n.site AND a.station = n.station AND a.event_id = n.ref""",
            (now,),
        ).rowcount
        back = 0
        if _has_table(conn, "station_status"):
            back = conn.execute(
                """UPDATE centre_notices n SET escalate_at = NULL FROM station_status s
                   WHERE n.kind = 'offline' AND n.acked_at IS NULL AND n.escalate_at <= to_timestamp(%s)
                     AND s.site = n.site AND s.station = n.station AND s.state = 'online'""",
                (now,),
            ).rowcount
        if acked or back:
            log.info("centre notices settled elsewhere: alarms handled on the screen=%d stations back online=%d", acked, back)

    # delivery

    def deliver(self) -> int:
        """Claim the sends that are due (a lease, committed), send each, record the outcome; return how many went out."""
        limit = self.opts.batch
        conn = self._connection()
        now = self.clock()
        with conn.transaction():
            conn.execute(
                """UPDATE centre_notify_sends s SET state = 'skipped', last_error = 'acknowledged'
                   FROM centre_notices n WHERE n.id = s.notice_id AND s.state = 'pending' AND n.acked_at IS NOT NULL"""
            )
            claimed = conn.execute(
                """UPDATE centre_notify_sends SET lease_until = to_timestamp(%(lease)s), claimed_by = %(me)s, attempts = attempts + 1
                   WHERE id IN (SELECT id FROM centre_notify_sends
                                WHERE state = 'pending' AND next_at <= to_timestamp(%(now)s)
                                  AND (lease_until IS NULL OR lease_until < to_timestamp(%(now)s))
                                ORDER BY next_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
                   RETURNING id, notice_id, level_path, responder, channel, address, attempts""",
                {"lease": now + self.opts.lease_s, "me": self.replica, "now": now, "limit": limit},
            ).fetchall()
            notices = {}
            if claimed:
                cur = conn.execute(
                    """SELECT id, kind, site, station, ref, extract(epoch FROM event_ts)::float8, summary, checkpoint, escalations
                       FROM centre_notices WHERE id = ANY(%s)""",
                    ([c[1] for c in claimed],),
                )
                cols = ["id", "kind", "site", "station", "ref", "event_ts", "summary", "checkpoint", "escalations"]
                notices = {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}
        sent = 0
        tree = self.tree(conn) if claimed else None
        for send_id, notice_id, level_path, responder, channel, address, attempts in claimed:
            notice = notices.get(notice_id)
            if notice is None:
                continue
            try:
                self._send(tree, notice, level_path, responder, channel, address, now)
            except SendError as exc:
                reason = str(exc)
                self._count("send_errors")
                with self._lock:
                    key = reason.split(":")[0][:40]
                    self.errors[key] = self.errors.get(key, 0) + 1
                final = attempts >= self.opts.max_attempts
                backoff = Backoff(self.opts.retry_initial_s, self.opts.retry_max_s)
                delay = [backoff.next() for _ in range(attempts)][-1]
                conn.execute(
                    """UPDATE centre_notify_sends SET state = %s, last_error = %s, next_at = to_timestamp(%s), lease_until = NULL
                       WHERE id = %s AND claimed_by = %s""",
                    ("failed" if final else "pending", reason[:300], now + delay, send_id, self.replica),
                )
                if final:
                    self._count("failed")
                log.warning(
                    "centre notify send failed id=%d notice=%d channel=%s responder=%s attempt=%d retry_in_s=%s error=%s",
                    send_id, notice_id, channel, plain(responder, 80), attempts, None if final else round(delay, 1), reason,
                )  # fmt: skip
                continue
            conn.execute(
                "UPDATE centre_notify_sends SET state = 'sent', sent_at = to_timestamp(%s), last_error = NULL "
                "WHERE id = %s AND claimed_by = %s",
                (self.clock(), send_id, self.replica),
            )
            sent += 1
            self._count("sent")
        return sent

    def ack_url(self, notice_id: int, responder: str, now: float) -> str:
        """Return the acknowledge link for ``responder`` of a notice (signed, expiring ``ack_ttl_s`` from ``now``)."""
        token = make_token(self.secret, notice_id, responder, now + self.opts.ack_ttl_s)
        return f"{self.opts.public_url.rstrip('/')}/ack/{token}"

    def message(self, tree: Tree | None, notice: dict[str, Any], level_path: str, responder: str, now: float) -> dict[str, Any]:
        """Return what a notice says (the webhook's and MQTT's JSON; the e-mail's lines): typed values only."""
        nodes = tree.nodes() if tree is not None else {}
        checkpoint = notice["checkpoint"]
        place = " / ".join(n.name for n in reversed(tree.chain(checkpoint))) if tree is not None and checkpoint in nodes else None
        return {
            "notice_id": notice["id"],
            "kind": notice["kind"],
            "site": notice["site"],
            "station": notice["station"],
            "ref": notice["ref"],
            "event_ts": notice["event_ts"],
            "checkpoint": checkpoint,
            "place": place or "unassigned",
            "level": level_path,
            "level_name": nodes[level_path].name if level_path in nodes else None,
            "escalations": notice["escalations"],
            "summary": notice["summary"],
            "responder": responder,
            "ack_url": self.ack_url(notice["id"], responder, now),
        }

    def _send(
        self, tree: Tree | None, notice: dict[str, Any], level_path: str, responder: str, channel: str, address: str, now: float
    ) -> None:
        message = self.message(tree, notice, level_path, responder, now)
        body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        if channel == "webhook":
            post_webhook(address, body, self.opts.webhook_secret, now)
        elif channel == "email":
            if self.opts.smtp is None:
                raise SendError("smtp_not_configured")
            subject, text = email_text(message)
            send_email(self.opts.smtp, self.opts.mail_from, responder, address, subject, text)
        elif self.mqtt is not None:
            self.mqtt.publish(address, body)
        else:
            raise SendError("mqtt_not_configured")

    # acknowledgement

    def look(self, token: Any) -> tuple[int, dict[str, Any]]:
        """Return what a link is about and whether it is acknowledged, changing nothing (the page a link opens)."""
        checked = check_token(self.secret, token, self.clock())
        if isinstance(checked, str):
            return (410 if checked == "expired" else 404), {"error": checked}
        with db.connect(self.db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT kind, site, station, acked_by, extract(epoch FROM acked_at)::float8 FROM centre_notices WHERE id = %s",
                (checked[0],),
            ).fetchone()
        if row is None:
            return 404, {"error": "no_such_notice"}
        keys = ("kind", "site", "station", "acked_by", "acked_at")
        return 200, {"notice_id": checked[0], "responder": checked[1], **dict(zip(keys, row, strict=True))}

    def acknowledge(self, token: Any) -> tuple[int, dict[str, Any]]:
        """Record the acknowledgement a link carries; return an HTTP status and what happened (never raises for bad input)."""
        checked = check_token(self.secret, token, self.clock())
        if isinstance(checked, str):
            return (410 if checked == "expired" else 404), {"error": checked}
        notice_id, responder = checked
        actor = f"responder:{plain(responder, 80)}"
        with db.connect(self.db_url) as conn, conn.transaction():
            done = conn.execute(
                """UPDATE centre_notices SET acked_by = %s, acked_at = to_timestamp(%s), escalate_at = NULL
                   WHERE id = %s AND acked_at IS NULL RETURNING kind, site, station, ref, event_ts""",
                (actor, self.clock(), notice_id),
            ).fetchone()
            if done is not None:
                db.audit(conn, actor, None, "notify.ack", f"{done[1]}/{done[2]}/{done[0]}", {"notice": notice_id})
                if done[0] == "alarm":  # the big screen's queue shows it acknowledged too (by the responder)
                    conn.execute(
                        f"""INSERT INTO centre_alarms (site, station, event_id, event_ts, state, ack_by, ack_at)
                            SELECT site, station, event_id, ts, 'acknowledged', %(actor)s, to_timestamp(%(now)s) FROM events
                            WHERE site = %(site)s AND station = %(station)s AND event_id = %(ref)s AND {ALARM_WHERE}
                              AND ts BETWEEN %(ts)s - interval '1 second' AND %(ts)s + interval '1 second'
                            LIMIT 1
                            ON CONFLICT DO NOTHING""",
                        {"actor": actor, "now": self.clock(), "site": done[1], "station": done[2], "ref": done[3], "ts": done[4]},
                    )
            row = conn.execute(
                "SELECT kind, site, station, acked_by, extract(epoch FROM acked_at)::float8 FROM centre_notices WHERE id = %s", (notice_id,)
            ).fetchone()
        if row is None:
            return 404, {"error": "no_such_notice"}
        if done is not None:
            self._count("acks")
            log.info("centre notice acknowledged id=%d by=%s", notice_id, actor)
        keys = ("kind", "site", "station", "acked_by", "acked_at")
        return 200, {"notice_id": notice_id, "already": done is None, **dict(zip(keys, row, strict=True))}


def _has_table(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()
    return bool(row and row[0])


KIND_TITLES = {"alarm": "Alarm", "outsider": "Outsider vehicle", "offline": "Checkpoint offline"}


def email_text(message: dict[str, Any]) -> tuple[str, str]:
    """Return the subject and the plain-text body of a notice's e-mail (every value one line of plain text)."""
    title = KIND_TITLES.get(message["kind"], "Notice")
    where = f"{plain(message['site'], 64)}/{plain(message['station'], 64)}"
    lines = [
        f"{title} at {where}",
        f"Place: {plain(message['place'])}",
        f"Time (UTC): {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(message['event_ts']))}",
    ]
    for key, value in sorted((message.get("summary") or {}).items()):
        lines.append(f"{plain(key, 40)}: {plain(value)}")
    if message["escalations"]:
        lines.append(f"Escalated {int(message['escalations'])} time(s): nobody acknowledged it below {plain(message['level_name'])}.")
    lines += ["", "Acknowledge (stops escalation):", message["ack_url"], ""]
    return f"[checkpoint] {title}: {where}", "\n".join(lines)


def ack_page(status: int, result: dict[str, Any], *, ask: bool = False) -> str:
    """Return the small HTML page of a link (every value escaped); ``ask``: the not-yet-acknowledged page with its button."""
    form = ""
    if status == 200 and ask and not result.get("acked_at"):
        what = f"{KIND_TITLES.get(result['kind'], 'notice')} at {result['site']}/{result['station']}"
        text = f"{what}: not acknowledged yet. Acknowledge it as {result['responder']}?"
        form = '<form method="post"><button type="submit">Acknowledge</button></form>'
    elif status != 200:
        texts = {
            "expired": "This link has expired.",
            "no_such_notice": "No such notice.",
            "database": "The centre cannot record it right now; open the link again in a minute.",
        }
        text = texts.get(result.get("error", ""), "Not a valid link.")
    else:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(result["acked_at"])) if result.get("acked_at") else "?"
        head = "Already acknowledged" if result.get("already", ask) else "Acknowledged"
        what = f"{KIND_TITLES.get(result['kind'], 'notice')} at {result['site']}/{result['station']}"
        text = f"{head}: {what} — by {result['acked_by']} at {when}."
    return f'<!doctype html><meta charset="utf-8"><title>Checkpoint centre</title><p>{html.escape(text)}</p>{form}\n'


def ack_route(notifier: Notifier) -> Any:
    """Return the Starlette route ``/ack/{token}``: GET shows the notice and a button, POST records the acknowledgement.

    Why not record on GET: mail scanners and chat previews open links before the person does; a
    fetch by a scanner must not silence an alarm's escalation.
    """
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def ack(request: Request) -> HTMLResponse:
        ask = request.method == "GET"
        try:
            status, result = await run_in_threadpool(notifier.look if ask else notifier.acknowledge, request.path_params["token"])
        except psycopg.Error:
            return HTMLResponse(ack_page(503, {"error": "database"}), status_code=503)
        headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}
        return HTMLResponse(ack_page(status, result, ask=ask), status_code=status, headers=headers)

    return Route("/ack/{token}", ack, methods=["GET", "POST"])
