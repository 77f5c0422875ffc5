"""Build one centre replica from its options: the writer, the MQTT subscriber and the health server; run it.

Start order: database (schema, partitions; the screen's tables) → writer thread → MQTT subscriber →
HTTP last. Stop is the reverse: the writer commits and acknowledges what it holds while the broker link is still up, then the
link closes (anything unacknowledged stays in the broker's session for the next start).
``station/centre/cli.py`` turns the command line into :class:`CentreOptions`.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.centre.db import connect, ddl_lock
from station.centre.fleet import FleetSubscriber, FleetWriter, ensure_fleet_schema
from station.centre.ingest import Ingestor
from station.centre.mqtt import CentreSubscriber
from station.centre.page import Screen, create_screen_app
from station.centre.screen import DayCache, RollupKeeper
from station.centre.web import create_app
from station.ops.redact import redact_url

log = logging.getLogger("station.centre")


@dataclass
class CentreOptions:
    """Everything a centre replica is configured with (the command line's options, typed)."""

    mqtt_url: str
    db_url: str
    host: str = "127.0.0.1"
    port: int = 8090
    share_group: str | None = "centre"
    prefix: str = "checkpoint/v1"
    client_id: str | None = None
    session_expiry_s: int = 3600
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    timezone: str | None = None
    retention_days: int = 400
    batch_size: int = 200
    batch_window_s: float = 0.1
    receive_maximum: int = 2000
    fleet: bool = True  # the fleet view: every station's retained status and state (station/centre/fleet.py)
    public_origin: str | None = None  # the big screen's origin behind a TLS proxy (https://centre.example)
    command_key: str | None = None  # the centre's command key (PEM): alarm handling is mirrored to the stations
    command_signer: str = "centre"
    notify_secret_file: str | None = None  # the webhooks' HMAC key: notifications to the tree's responders (station/centre/notify.py)
    smtp: str | None = None  # the SMTP server the notices' e-mails go through: HOST:PORT or smtp[+starttls]:// / smtps://[USER@]HOST[:PORT]
    smtp_password_file: str | None = None  # the SMTP user's password (first line); never on the command line
    smtp_ca: str | None = None  # a CA bundle the SMTP server is verified against (a private CA); default: the system's trust
    mail_from: str = "checkpoint-centre@localhost"
    escalate_after_s: float = 600.0  # unacknowledged this long: the next level up is told
    notify_url: str | None = None  # the centre's web as responders reach it (ack links); default public_origin or http://host:port
    district_key_files: tuple[str, ...] = ()  # the key officer's district key file(s): the tracing page hashes typed values with them
    repair_after_s: float = 60.0  # with a command key: gaps open this long are asked for again (station/centre/repair.py); 0 = off
    repair_retry_s: float = 120.0  # first wait for an asked gap to close before asking again (doubles per try)


class Centre:
    """One centre replica wired from :class:`CentreOptions`; raises ``ValueError`` for a bad URL or option."""

    def __init__(self, opts: CentreOptions) -> None:
        self.opts = opts
        district_keys = self._district_keys(opts)  # first: a bad key file is a usage error before anything is built
        self.subscriber: CentreSubscriber | None = None
        self.writer = Ingestor(
            opts.db_url,
            self._ack,
            prefix=opts.prefix,
            timezone=opts.timezone,
            retention_days=opts.retention_days,
            batch_size=opts.batch_size,
            batch_window_s=opts.batch_window_s,
            on_fatal=self._writer_failed,
        )
        self._server: Any = None
        self.subscriber = CentreSubscriber(
            opts.mqtt_url,
            self.writer.offer,
            prefix=opts.prefix,
            share_group=opts.share_group,
            client_id=opts.client_id,
            session_expiry_s=opts.session_expiry_s,
            receive_maximum=opts.receive_maximum,
            username=opts.username,
            password=opts.password,
            tls_ca=opts.tls_ca,
        )
        self.fleet_writer: FleetWriter | None = None
        self.fleet_subscriber: FleetSubscriber | None = None
        if opts.fleet:
            self.fleet_writer = FleetWriter(opts.db_url, opts.prefix)
            self.fleet_subscriber = FleetSubscriber(
                opts.mqtt_url,
                self.fleet_writer,
                prefix=opts.prefix,
                client_id=f"{opts.client_id}-fleet" if opts.client_id else None,
                username=opts.username,
                password=opts.password,
                tls_ca=opts.tls_ca,
            )
        self.screen = Screen(opts.db_url, public_origin=opts.public_origin, district_keys=district_keys)
        # The screen's roll-up is kept current by a thread of its own, not by the screens' requests (docs/centre.md "Scale").
        self.screen.cache = DayCache(sync_in_request=False)
        self.rollup: RollupKeeper | None = None
        if opts.command_key:
            from station.centre.mirror import AlarmMirror

            self.screen.mirror = AlarmMirror(
                opts.mqtt_url,
                Path(opts.command_key),
                prefix=opts.prefix,
                signer=opts.command_signer,
                username=opts.username,
                password=opts.password,
                tls_ca=opts.tls_ca,
            )
        self.repair: Any = None
        if opts.command_key and opts.repair_after_s > 0:
            from station.centre.repair import GapRepair, RepairOptions

            self.repair = GapRepair(
                opts.db_url,
                opts.mqtt_url,
                Path(opts.command_key),
                opts=RepairOptions(after_s=opts.repair_after_s, retry_s=opts.repair_retry_s, interval_s=min(5.0, opts.repair_after_s)),
                prefix=opts.prefix,
                signer=opts.command_signer,
                replica=f"repair-{opts.client_id}" if opts.client_id else None,
                username=opts.username,
                password=opts.password,
                tls_ca=opts.tls_ca,
            )
        from station.centre.live import LiveHub

        # Every replica holds every station's latest picture (an ordinary subscription) and, with a command
        # key, sends the signed `watch` leases while someone has a picture open (station/centre/live.py).
        self.screen.live = LiveHub(
            opts.mqtt_url,
            prefix=opts.prefix,
            key_path=Path(opts.command_key) if opts.command_key else None,
            signer=opts.command_signer,
            username=opts.username,
            password=opts.password,
            tls_ca=opts.tls_ca,
        )
        self.app: Any = create_app(self.subscriber.stats, self._writer_stats, create_screen_app(self.screen))
        self.notifier: Any = None
        if opts.notify_secret_file:
            self.notifier = self._notifier(opts)
            from starlette.applications import Starlette
            from starlette.routing import Mount

            from station.centre.notify import ack_route

            self.app = Starlette(routes=[ack_route(self.notifier), Mount("/", app=self.app)])

    @staticmethod
    def _district_keys(opts: CentreOptions) -> tuple[Any, ...]:
        """Read the district key files (never copied into the database); raise ``ValueError`` naming a bad one."""
        from station.centre.tracing import load_key_file
        from station.codes.trace_key import DistrictKeyError

        try:
            return tuple(load_key_file(Path(f)) for f in opts.district_key_files)
        except DistrictKeyError as exc:
            raise ValueError(f"--district-key-file {exc}") from None

    @staticmethod
    def _smtp(opts: CentreOptions) -> Any:
        """Return the SMTP server of ``--smtp`` with its password and CA file (or None); raise ``ValueError`` naming a bad option."""
        from station.centre.notify import parse_smtp

        if not opts.smtp:
            if opts.smtp_password_file or opts.smtp_ca:
                raise ValueError(f"--smtp-{'password-file' if opts.smtp_password_file else 'ca'}: needs --smtp (the mail server)")
            return None
        password = None
        if opts.smtp_password_file:
            try:
                lines = Path(opts.smtp_password_file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeError) as exc:
                why = getattr(exc, "strerror", None) or "not UTF-8"
                raise ValueError(f"--smtp-password-file {opts.smtp_password_file}: cannot read it ({why})") from None
            password = lines[0].strip() if lines else ""
            if not password:
                raise ValueError(f"--smtp-password-file {opts.smtp_password_file}: the first line is empty (expected the password)")
        if opts.smtp_ca:
            import ssl

            try:
                ssl.create_default_context(cafile=opts.smtp_ca)  # read now: a bad bundle is a usage error, not a failed send later
            except (OSError, ValueError) as exc:
                why = getattr(exc, "strerror", None) or exc
                raise ValueError(f"--smtp-ca {opts.smtp_ca}: not a readable PEM CA bundle ({why})") from None
        return parse_smtp(opts.smtp, password=password, ca_file=opts.smtp_ca)

    @staticmethod
    def _notifier(opts: CentreOptions) -> Any:
        """Build the notifier (station/centre/notify.py); raise ``ValueError`` naming a bad option."""
        from station.centre.notify import MqttNotices, Notifier, NotifyOptions

        try:
            secret = Path(opts.notify_secret_file or "").read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"--notify-secret-file {opts.notify_secret_file}: cannot read it ({exc.strerror})") from None
        if len(secret) < 16:
            raise ValueError(f"--notify-secret-file {opts.notify_secret_file}: at least 16 bytes of secret expected")
        url = opts.notify_url or opts.public_origin or f"http://{opts.host}:{opts.port}"
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--notify-url {url!r}: expected http(s)://host[:port] (where responders reach this centre)")
        notify_opts = NotifyOptions(
            public_url=url,
            webhook_secret=secret,
            smtp=Centre._smtp(opts),
            mail_from=opts.mail_from,
            prefix=opts.prefix,
            escalate_after_s=opts.escalate_after_s,
        )
        mqtt = MqttNotices(opts.mqtt_url, username=opts.username, password=opts.password, tls_ca=opts.tls_ca)
        return Notifier(opts.db_url, notify_opts, mqtt=mqtt)

    def _writer_failed(self, exc: BaseException) -> None:
        """End :meth:`serve` (exit status 1): a replica whose writer died must not stay up acknowledging nothing."""
        if self._server is not None:
            self._server.should_exit = True

    @property
    def failed(self) -> bool:
        """Return whether the writer died of an error it could not handle."""
        return self.writer.fatal is not None

    def _writer_stats(self) -> dict[str, Any]:
        """Return the writer's stats, with the gap repair's counters when it runs (/healthz, /metrics)."""
        stats = self.writer.stats()
        if self.repair is not None:
            stats["repair"] = self.repair.stats()
        return stats

    def _ack(self, delivery: Any) -> bool:
        return self.subscriber.ack(delivery) if self.subscriber is not None else False

    def start(self) -> None:
        """Open the database, start the writer, then connect to the broker."""
        self.writer.open()
        self.screen.open()
        self.rollup = RollupKeeper(self.opts.db_url, self.screen.tz, today=self.screen.today)
        self.rollup.start()
        self.writer.start()
        assert self.subscriber is not None
        self.subscriber.start()
        if self.screen.mirror is not None:
            self.screen.mirror.start()
        self.screen.live.start()
        if self.fleet_writer is not None and self.fleet_subscriber is not None:
            with connect(self.opts.db_url) as conn, conn.transaction():
                ddl_lock(conn)  # two replicas starting together would race on CREATE … IF NOT EXISTS
                ensure_fleet_schema(conn)
            self.fleet_writer.start()
            self.fleet_subscriber.start()
        if self.notifier is not None:
            self.notifier.open()
            self.notifier.start()
        if self.repair is not None:
            self.repair.open()
            self.repair.start()
        log.info(
            "centre started db=%s mqtt=%s:%d filter=%s timezone=%s retention_days=%d",
            redact_url(self.opts.db_url),
            self.subscriber.host,
            self.subscriber.port,
            self.subscriber.filter,
            self.writer.tz.key,
            self.opts.retention_days,
        )

    def stop(self) -> None:
        """Commit and acknowledge what is held, then disconnect."""
        if self.repair is not None:
            self.repair.stop()
        if self.notifier is not None:
            self.notifier.stop()
        if self.fleet_subscriber is not None and self.fleet_writer is not None:
            self.fleet_subscriber.stop()
            self.fleet_writer.stop()
        self.writer.stop()
        if self.subscriber is not None:
            self.subscriber.stop()
        if self.screen.mirror is not None:
            self.screen.mirror.stop()
        self.screen.live.stop()
        if self.rollup is not None:
            self.rollup.stop()
        self.screen.close()
        log.info("centre stopped stats=%s", self.writer.stats())

    def serve(self) -> None:
        """Run the health server in this thread until SIGINT/SIGTERM (uvicorn handles them)."""
        import uvicorn

        config = uvicorn.Config(self.app, host=self.opts.host, port=self.opts.port, log_level="warning", access_log=False)
        server = self._server = uvicorn.Server(config)
        if self.failed:
            return
        if threading.current_thread() is threading.main_thread():
            # uvicorn re-raises the signal to the handler installed before it: a no-op, so that we
            # return, commit what is held and exit 0 (systemd's stop is a clean stop).
            def stopped_by(signum: int, _frame: Any) -> None:
                log.info("centre stopping signal=%s", signal.Signals(signum).name)

            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, stopped_by)
        server.run()


def run_centre(opts: CentreOptions) -> Centre:
    """Run a centre replica until SIGINT/SIGTERM and return it (stopped)."""
    centre = Centre(opts)
    centre.start()
    try:
        centre.serve()
    finally:
        centre.stop()
    return centre
