"""Build the board from its options: the history, the state, the MQTT subscriber and the web server; run it.

``station/board/cli.py`` turns the command line into :class:`BoardOptions`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from station.board.auth import USERS_NAME, Sessions, UsersFile, load_secret
from station.board.history import BoardHistory
from station.board.mqtt import BoardSubscriber
from station.board.state import MAX_STATIONS, BoardState
from station.board.web import BoardAuth, create_app

log = logging.getLogger("station.board")

HISTORY_NAME = "board.sqlite3"
REFRESH_S = 2.0
"""How often the history is re-read: other replicas write events this replica never receives, and
the day rolls over at midnight."""


@dataclass
class BoardOptions:
    """Everything a board replica is configured with (the command line's options, typed)."""

    mqtt_url: str
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".")
    share_group: str | None = None
    prefix: str = "checkpoint/v1"
    client_id: str | None = None
    session_expiry_s: int = 3600
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    keep_days: int = 30
    backlog_rows: int = 20
    alarm_window_s: float = 900.0
    users_path: Path | None = None  # default: <data_dir>/board-users.json
    public_origin: str | None = None  # https://… when a TLS proxy serves the board: cookies get Secure
    session_ttl_s: float = 7 * 86400.0
    max_stations: int = MAX_STATIONS


class Board:
    """One board replica: history, state, subscriber and web app, wired from :class:`BoardOptions`.

    The constructor raises ``ValueError`` for a bad broker URL or public origin and when the users
    file names nobody (there is no anonymous board).
    """

    def __init__(self, opts: BoardOptions) -> None:
        self.opts = opts
        if opts.public_origin and not opts.public_origin.startswith(("https://", "http://")):
            raise ValueError(f"public origin {opts.public_origin!r}: expected https://host[:port]")
        users_path = Path(opts.users_path) if opts.users_path else Path(opts.data_dir) / USERS_NAME
        users = UsersFile(users_path)
        if not users.users():
            # No anonymous board: a page that shows every checkpoint needs someone to log in.
            raise ValueError(
                f"no board users in {users_path}: add one with `stationctl board-user add NAME --role admin --users {users_path}`"
            )
        Path(opts.data_dir).mkdir(parents=True, exist_ok=True)
        self.auth = BoardAuth(
            users, Sessions(load_secret(Path(opts.data_dir)), users, ttl_s=opts.session_ttl_s), public_origin=opts.public_origin
        )
        self.history = BoardHistory(Path(opts.data_dir) / HISTORY_NAME, keep_days=opts.keep_days)
        self.state = BoardState(
            self.history, opts.prefix, alarm_window_s=opts.alarm_window_s, backlog_rows=opts.backlog_rows, max_stations=opts.max_stations
        )
        self.subscriber = BoardSubscriber(
            opts.mqtt_url,
            self.state.handle,
            prefix=opts.prefix,
            share_group=opts.share_group,
            client_id=opts.client_id,
            session_expiry_s=opts.session_expiry_s,
            username=opts.username,
            password=opts.password,
            tls_ca=opts.tls_ca,
        )
        self.app = create_app(self.state, self.auth, self.subscriber.stats)
        self._stop = threading.Event()
        self._refresher = threading.Thread(target=self._refresh_loop, name="board-refresh", daemon=True)

    def _refresh_loop(self) -> None:
        ticks = 0
        while not self._stop.wait(REFRESH_S):
            try:
                self.state.refresh_history()
                ticks += 1
                if ticks % 1800 == 1:  # about hourly
                    self.history.prune()
            except Exception:  # logged; the next tick tries again (e.g. the file was locked too long)
                log.exception("board history refresh failed")

    def start(self) -> None:
        """Connect to the broker and start re-reading the history."""
        self.subscriber.start()
        self._refresher.start()

    def stop(self) -> None:
        """Disconnect, stop the refresher and close the history."""
        self._stop.set()
        self.subscriber.stop()
        self._refresher.join(5.0)
        self.history.close()

    def serve(self) -> None:
        """Run the web server in this thread until SIGINT/SIGTERM (uvicorn handles them)."""
        import signal

        import uvicorn

        config = uvicorn.Config(self.app, host=self.opts.host, port=self.opts.port, log_level="warning", access_log=False)
        server = uvicorn.Server(config)
        if threading.current_thread() is threading.main_thread():
            # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal to the
            # handler that was installed before it: make that one a no-op so that we return, close
            # the MQTT session and the history, and exit 0 (systemd's stop is a clean stop).
            def stopped_by(signum: int, _frame: Any) -> None:
                log.info("board stopping signal=%s", signal.Signals(signum).name)

            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, stopped_by)
        log.info(
            "board serving http://%s:%d mqtt=%s share_group=%s", self.opts.host, self.opts.port, self.subscriber.host, self.opts.share_group
        )
        server.run()


def run_board(opts: BoardOptions) -> Board:
    """Run a board until SIGINT/SIGTERM and return it (stopped)."""
    board = Board(opts)
    board.start()
    try:
        board.serve()
    finally:
        board.stop()
    return board
