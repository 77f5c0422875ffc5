"""Store-and-forward: the pump that moves outbox rows to the broker and deletes them on PUBACK.

Delivery is **at-least-once**. A row leaves the outbox table only when the broker acknowledged
it; everything in between lives in this pump's memory and may be forgotten at any time (restart,
reconnect, ack timeout), in which case the row is simply published again. Receivers de-duplicate
by ``msg_id``. Kura's MessageStore and ThingsBoard's gateway work the same way
(``architecture.md`` §2.1, §2.3, §2.6).

Threading model — why there is no lock around the in-flight map: one pump thread owns it. paho's
network thread only *enqueues* ``("ack", mid)`` and ``("connected", None)``; the store enqueues a
wake-up after each commit. The pump thread publishes a row, records ``mid → row`` and only later
drains the queue, so an ack can never be looked up before its mapping exists (the
PUBACK-before-mid race, eclipse/paho.mqtt.python#361), and acks never wait for SQLite (the
network thread must not fsync).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol

from station.ops.backoff import Backoff
from station.ports import NotConnectedError, Publisher, PublishError
from station.store.events import OutboxRow

log = logging.getLogger("station.link.sync")

SETTLE_AFTER_S = 0.05
"""Longest an acknowledged row waits for its batch's DELETE (see ``OutboxPump._should_settle``)."""

DEFER_SETTLE_S = 60.0
"""Longest a delivered row's DELETE waits for the next screening's write (the store's deferred settle)."""


def status_topic(topic_prefix: str, site: str, station_id: str) -> str:
    """Return the retained availability topic of one station (``architecture.md`` §2 topic tree)."""
    return f"{topic_prefix}/{site}/{station_id}/status"


def status_payload(state: str, session: int) -> bytes:
    """Availability payload: ``online`` / ``stopped`` / ``offline`` (the Will) with the session.

    The session number lets the back end ignore a late Will from a previous session that
    arrives after the new session's ``online`` (Sparkplug's ``bdSeq`` problem).
    """
    body = {"state": state, "session": session, "version": _VERSION}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def package_version() -> str:
    """Return the installed package's version (``0+source`` from a source tree)."""
    try:
        return version("checkpoint-station")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+source"


_VERSION = package_version()


class OutboxSource(Protocol):
    """What the pump needs from the store (implemented by ``station.store.events.SqliteEventStore``)."""

    def outbox_pending(self, limit: int, exclude_ids: AbstractSet[int] = frozenset()) -> list[OutboxRow]:
        """Return up to ``limit`` undelivered rows, highest priority first, skipping ``exclude_ids`` (in flight)."""

    def outbox_mark_sent_many(self, row_ids: Iterable[int]) -> None:
        """Record that these rows were handed to the broker."""

    def outbox_ack_many(self, row_ids: Iterable[int]) -> int:
        """Delete acknowledged rows; return how many were deleted."""

    def outbox_settle(self, acked_ids: Iterable[int], sent_ids: Iterable[int], *, defer: bool = False) -> int:
        """Delete acknowledged rows and count publish attempts of sent ones (``defer``: with the store's next outbox write)."""

    def outbox_enforce_bounds(self) -> int:
        """Drop the oldest ordinary rows beyond the outbox's capacity; return how many."""

    def outbox_flush_deferred(self, older_than_s: float = 0.0) -> bool:
        """Write deferred deletes whose oldest waited ``older_than_s``; return whether it wrote."""

    def outbox_stats(self) -> dict[str, Any]:
        """Return the outbox depth (pending rows, bytes, oldest age)."""

    def add_outbox_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every commit that adds outbox rows."""


@dataclass(slots=True)
class _InFlight:
    row_id: int
    sent_t: float


class OutboxPump:
    """Publishes outbox rows at QoS 1 with a bounded in-flight window; deletes them on PUBACK.

    * Only publishes while the publisher is connected; otherwise it sleeps until woken.
    * At most ``max_in_flight`` rows are unacknowledged at once (Kura's
      ``in-flight-messages.max-number``): a backlog after an outage drains steadily instead of
      flooding paho's memory queue.
    * On reconnect it forgets the in-flight map; those rows are still in the table and go out
      again (Kura's republish-on-new-session).
    * A row unacknowledged for ``ack_timeout`` seconds is forgotten and re-sent (a broker that
      swallowed a PUBACK, or refused the message with an MQTT 5 error code).
    * Errors from the store (disk full, I/O error) are logged and retried with back-off; the
      thread never dies silently. :meth:`alive` is meant for the watchdog's liveness checks.
    """

    def __init__(
        self,
        store: OutboxSource,
        publisher: Publisher,
        max_in_flight: int = 10,
        clock: Callable[[], float] = time.monotonic,
        *,
        ack_timeout: float = 60.0,
        poll_interval: float = 1.0,
        bounds_interval: float = 10.0,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._store = store
        self._publisher = publisher
        self.max_in_flight = max_in_flight
        self._clock = clock
        self.ack_timeout = ack_timeout
        self.poll_interval = poll_interval
        self.bounds_interval = bounds_interval
        self._bounds_t: float | None = None

        self._events: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._in_flight: dict[int, _InFlight] = {}  # mid → row; pump thread only
        self._unmarked: list[int] = []  # rows published whose attempt is not yet counted; pump thread only
        self._to_delete: list[int] = []  # rows acknowledged, not yet deleted; pump thread only
        self._to_delete_since = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = threading.Condition()

        self.published = 0
        self.acked = 0
        self.resent = 0
        self.forgotten = 0  # in-flight rows forgotten on reconnect
        self.ack_timeouts = 0
        self.unknown_acks = 0
        self.errors = 0
        self.dropped = 0  # ordinary rows dropped by the outbox bounds (alarms never are)

        publisher.set_ack_handler(self._on_ack)
        publisher.on_connected.append(self._on_connected)
        store.add_outbox_listener(self.wake)

    # ------------------------------------------------------------------ public

    def start(self) -> None:
        """Start the pump thread (once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="outbox-pump", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread. Unacknowledged rows stay in the outbox for the next start."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self.wake()
        thread.join(timeout)
        if thread.is_alive():
            log.error("outbox pump did not stop within %.1f s", timeout)
        else:
            self._thread = None

    def alive(self) -> bool:
        """Return whether the pump thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Look for new rows now instead of at the next poll (rows were committed); never blocks."""
        self._events.put(("wake", 0))

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._store.outbox_stats()["pending"] == 0:
                self._store.outbox_flush_deferred()  # delivered rows leave the file too
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._progress:
                self._progress.wait(min(remaining, 0.2))

    def pending(self) -> int:
        """Return the rows still waiting for their PUBACK."""
        return int(self._store.outbox_stats()["pending"])

    def stats(self) -> dict[str, int]:
        """Return the pump's counters and its in-flight window."""
        return {
            "published": self.published,
            "acked": self.acked,
            "resent": self.resent,
            "in_flight": len(self._in_flight),
            "forgotten": self.forgotten,
            "ack_timeouts": self.ack_timeouts,
            "unknown_acks": self.unknown_acks,
            "errors": self.errors,
            "dropped": self.dropped,
        }

    # ------------------------------------------------------------------ callbacks (other threads)

    def _on_ack(self, mid: int) -> None:
        self._events.put(("ack", mid))

    def _on_connected(self) -> None:
        self._events.put(("connected", 0))

    # ------------------------------------------------------------------ pump thread

    def _run(self) -> None:
        log.info("outbox pump started (window %d)", self.max_in_flight)
        backoff = Backoff(0.5, 30.0)
        block = True
        while not self._stop.is_set():
            try:
                block = not self._step(block)
                backoff.reset()
            except Exception:  # counted, logged with traceback, retried with backoff
                self.errors += 1
                delay = backoff.next()
                log.exception("outbox pump step failed; retrying in %.1f s", delay)
                self._stop.wait(delay)
                block = True
        if self._unmarked or self._to_delete:
            try:
                self._settle()
            except Exception:  # logged; the rows stay and are sent again (duplicates, not loss)
                log.exception("could not settle acknowledged rows at stop")
        log.info("outbox pump stopped: %s", self.stats())

    def _step(self, block: bool) -> bool:
        """One iteration; returns True when more work is ready right away."""
        acked_rows = self._handle_events(block)
        if acked_rows:
            if not self._to_delete:
                self._to_delete_since = time.monotonic()
            self._to_delete.extend(acked_rows)
        self._expire()
        if self._should_settle():
            self._settle()
        self._store.outbox_flush_deferred(DEFER_SETTLE_S)  # a quiet lane: no screening write to ride on
        now = self._clock()
        if self._bounds_t is None or now - self._bounds_t >= self.bounds_interval:
            self._bounds_t = now  # also while disconnected: that is when the outbox grows
            self.dropped += self._store.outbox_enforce_bounds()
        if self._stop.is_set() or not self._publisher.connected():
            return False
        free = self.max_in_flight - len(self._in_flight)
        if free <= 0:
            return False  # wait for acks
        exclude = {f.row_id for f in self._in_flight.values()}
        exclude.update(self._to_delete)  # acknowledged, deleted with the next batch
        rows = self._store.outbox_pending(free, exclude)
        sent: list[int] = []
        try:
            for row in rows:
                try:
                    mid = self._publisher.publish(row.topic, row.payload, row.qos, False)
                except NotConnectedError as exc:
                    log.debug("publish of outbox row %d deferred: %s", row.id, exc)
                    break
                except PublishError as exc:
                    log.warning("publish of outbox row %d refused, will retry: %s", row.id, exc)
                    break
                self._in_flight[mid] = _InFlight(row.id, self._clock())
                sent.append(row.id)
                self.published += 1
                if row.attempts > 0:
                    self.resent += 1
        finally:
            self._unmarked.extend(sent)  # counted with the next acks (outbox_settle)
        return len(sent) == free and len(rows) == free

    def _should_settle(self) -> bool:
        """Delete acknowledged rows in batches: one fsync per half window, not per PUBACK.

        Waiting is safe: an acknowledged row not yet deleted is excluded from publishing, and if
        the station dies first it is merely sent again (a duplicate, never a loss).
        """
        if not self._in_flight:
            return bool(self._to_delete or self._unmarked)
        if not self._to_delete:
            return False
        return len(self._to_delete) >= max(1, self.max_in_flight // 2) or time.monotonic() - self._to_delete_since >= SETTLE_AFTER_S

    def _settle(self) -> None:
        """One transaction for the acknowledged rows and the publish attempts not yet counted."""
        acked, self._to_delete = self._to_delete, []
        sent, self._unmarked = self._unmarked, []
        try:
            # Deferred: deleted by the next screening's write, which touches the same outbox pages
            # (one commit, not two, per screening); left out of every outbox read until then.
            self._store.outbox_settle(acked, sent, defer=True)
        except BaseException:
            self._to_delete, self._unmarked = acked + self._to_delete, sent + self._unmarked
            raise
        if acked:
            self.acked += len(acked)
            with self._progress:
                self._progress.notify_all()

    def _handle_events(self, block: bool) -> list[int]:
        """Drain the event queue (waiting up to ``poll_interval`` for the first one if ``block``)."""
        acked: list[int] = []
        try:
            item = self._events.get(timeout=self.poll_interval) if block else self._events.get_nowait()
        except queue.Empty:
            return acked
        while True:
            kind, mid = item
            if kind == "ack":
                entry = self._in_flight.pop(mid, None)
                if entry is None:
                    # An ack for a row already forgotten (reconnect, timeout): it will be sent
                    # again and acked again; the duplicate is harmless.
                    self.unknown_acks += 1
                else:
                    acked.append(entry.row_id)
            elif kind == "connected" and self._in_flight:
                log.info("reconnected: %d in-flight row(s) will be re-sent", len(self._in_flight))
                self.forgotten += len(self._in_flight)
                self._in_flight.clear()
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return acked

    def _expire(self) -> None:
        if not self._in_flight:
            return
        now = self._clock()
        stale = [mid for mid, f in self._in_flight.items() if now - f.sent_t > self.ack_timeout]
        for mid in stale:
            entry = self._in_flight.pop(mid)
            log.warning("outbox row %d not acknowledged within %.0f s; will re-send", entry.row_id, self.ack_timeout)
        self.ack_timeouts += len(stale)


# ------------------------------------------------------------------------------ wiring helpers


def read_password(cfg_mqtt: Any, env: Any = None) -> str | None:
    """Return the broker password from ``password_file`` (first line) or the ``password_env`` variable.

    Never logged. ``None`` when neither is set (a username without a password is allowed).
    """
    import os
    from pathlib import Path

    env = os.environ if env is None else env
    if cfg_mqtt.password_file:
        text = Path(cfg_mqtt.password_file).read_text(encoding="utf-8")
        return text.splitlines()[0] if text else ""
    return env.get(cfg_mqtt.password_env) or None


def publisher_from_config(
    cfg: Any,
    session: int,
    *,
    url: str | None = None,
    client_suffix: str = "",
    status_topic_override: str | None = None,
) -> Any:
    """Return an :class:`~drivers.publish.mqtt.MqttPublisher` for ``cfg.mqtt`` (``url`` overrides it).

    ``client_suffix`` gives a helper tool (``stationctl outbox flush``) its own client id: with
    the daemon's id the broker would disconnect the daemon. Such a tool also gets its own status
    topic so that it never announces the station itself as online.
    """
    from drivers.publish.mqtt import MqttPublisher

    m = cfg.mqtt
    site, station_id = cfg.station.site, cfg.station.id
    topic = status_topic_override or status_topic(m.topic_prefix, site, station_id)
    return MqttPublisher(
        url or m.url,
        client_id=f"checkpoint-{site}-{station_id}{client_suffix}",
        status_topic=topic,
        will_payload=status_payload("offline", session),
        online_payload=status_payload("online", session),
        stopped_payload=status_payload("stopped", session),
        keepalive=m.keepalive_s,
        protocol=m.protocol,
        username=m.username or None,
        password=read_password(m) if m.username else None,
        tls_ca=m.tls_ca_file or None,
        tls_certfile=m.tls_cert_file or None,
        tls_keyfile=m.tls_key_file or None,
        reconnect_min_delay=m.reconnect_min_s,
        reconnect_max_delay=m.reconnect_max_s,
    )


def drain_bounded(pump: OutboxPump, publisher: Any, timeout: float, unreachable_after: float = 3.0) -> bool:
    """Wait up to ``timeout`` s for the outbox to empty; return whether it did.

    Give up after ``unreachable_after`` s if the broker was never reached (or refused the
    credentials). The rows stay queued either way.
    """
    deadline = time.monotonic() + timeout
    give_up = time.monotonic() + unreachable_after
    while True:
        if pump.drain(0.2):
            return True
        now = time.monotonic()
        if now >= deadline:
            break
        if publisher.state == "auth_failed" or (now >= give_up and publisher.connects == 0):
            break
    pending = pump.pending()
    log.warning(
        "outbox not drained pending=%d broker_state=%s waited_s=%.1f",
        pending,
        publisher.state,
        timeout - max(0.0, deadline - time.monotonic()),
    )
    return False


def bounds_from_config(cfg: Any) -> Any:
    """Return the outbox capacity from ``mqtt.outbox_max_*`` (see ``station.store.events.OutboxBounds``)."""
    from station.store.events import OutboxBounds

    m = cfg.mqtt
    return OutboxBounds(m.outbox_max_rows, m.outbox_max_bytes, m.outbox_max_age_days * 86400.0)
