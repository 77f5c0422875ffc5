"""``station``: the daemon (``station run``), the hardware-free demo (``station demo``), the board and the centre.

Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from station.board.cli import board
from station.centre.cli import centre
from station.config import ConfigError, StationConfig, load_config
from station.ops.logs import configure

log = logging.getLogger("station.cli")


def _load(config: Path | None, overrides: tuple[Path, ...]) -> StationConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Checkpoint station: screening gate daemon."""


@main.command()
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), required=True, help="station.toml")
@click.option(
    "--override",
    "overrides",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Extra TOML layered on top (e.g. calibration.toml)",
)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help="Overrides station.data_dir")
def run(config: Path, overrides: tuple[Path, ...], data_dir: Path | None) -> None:
    """Run the station on the devices named in the configuration (systemd ExecStart)."""
    from station.app import StationApp

    cfg = _load(config, overrides)
    configure(cfg.logging.level, cfg.logging.file, cfg.logging.format)
    app = StationApp(cfg, data_dir=data_dir, config_path=config)
    try:
        app.start()
    except Exception as exc:
        log.exception("start-up failed error=%s", exc)
        sys.exit(1)
    try:
        app.run_forever()
    finally:
        app.stop()


@main.command()
@click.option("--people", type=click.IntRange(1, 100000), default=10, show_default=True, help="How many people walk up")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help="Default: the per-user data dir /demo")
@click.option("--mqtt", "mqtt_url", default=None, help="mqtt://host:port of a broker to sync events to (optional)")
@click.option("--fast", is_flag=True, help="No human walking pace: the next person steps up as soon as the lane is free")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per decision on stdout")
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Start from this config instead of the defaults",
)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="WARNING", show_default=True)
@click.option("--keep-running", is_flag=True, help="After the last person keep the station up (status, snapshots) until Ctrl-C")
@click.option(
    "--http",
    "http_listen",
    default=None,
    metavar="HOST:PORT",
    help="Serve the operator page here while the demo runs (e.g. 127.0.0.1:8080)",
)
@click.option(
    "--operator-pin",
    default="123456",
    show_default=True,
    help="The demo's operator PIN for the page's actions (demo only; a station uses http.pin_hash)",
)
@click.option("--wait-for-page", is_flag=True, help="With --http: nobody walks up until the operator page is open")
def demo(
    people: int,
    data_dir: Path | None,
    mqtt_url: str | None,
    fast: bool,
    as_json: bool,
    config: Path | None,
    log_level: str,
    keep_running: bool,
    http_listen: str | None,
    operator_pin: str,
    wait_for_page: bool,
) -> None:
    """Run the real pipeline against an emulated thermal module, a replayed camera and mock GPIO."""
    from sim.demo import DemoRun, human_line, json_line, print_summary, summary
    from station.app import default_data_dir

    configure(log_level)
    cfg = _load(config, ())
    if mqtt_url:
        from station.ops.redact import error_text, redact_url

        try:
            cfg.mqtt.url = mqtt_url
        except ValueError as exc:
            click.echo(f"--mqtt {redact_url(mqtt_url)!r}: {error_text(exc)}", err=True)
            sys.exit(2)
    if http_listen:
        from station.web.pin import hash_pin

        host, sep, port = http_listen.rpartition(":")
        try:
            if not sep or not port.isdigit():
                raise ValueError("expected HOST:PORT")
            cfg.http.enabled, cfg.http.listen, cfg.http.port = True, host or "127.0.0.1", int(port)
            cfg.http.pin_hash = hash_pin(operator_pin)
        except ValueError as exc:
            click.echo(f"--http {http_listen!r} / --operator-pin: {exc}", err=True)
            sys.exit(2)
    data_dir = data_dir or (default_data_dir() / "demo")
    out = sys.stdout
    if not as_json:
        click.echo(f"checkpoint station demo: {people} people, data in {data_dir}", err=False)

    def printer(person, decided) -> None:  # type: ignore[no-untyped-def]
        out.write((json_line(person, decided) if as_json else human_line(person, decided)) + "\n")
        out.flush()

    run_ = DemoRun(cfg, people=people, data_dir=data_dir, fast=fast, on_decided=printer, wait_for_page=wait_for_page)
    stop = threading.Event()
    if keep_running:
        # Ctrl-C / SIGTERM end a long-running demo cleanly at any point (summary printed, exit 0
        # once everyone was decided), also while the queue is still walking up.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    if http_listen and not as_json:
        from station.web.access import is_loopback, load_token

        # Beyond 127.0.0.1 the page needs the station's token (the same file the daemon reads).
        token = "" if is_loopback(cfg.http.listen) else f"?token={load_token(data_dir)}"
        click.echo(f"operator page: http://{cfg.http.listen}:{cfg.http.port}/{token}  (demo operator PIN {operator_pin})")
    try:
        result = run_.run(keep_running=keep_running, stop=stop)
    except KeyboardInterrupt:
        sys.exit(1)
    s = summary(result)
    if as_json:
        # stdout carries only the per-decision objects; the run's summary goes to stderr.
        click.echo(json.dumps({"summary": s}, ensure_ascii=False, default=str), err=True)
    else:
        print_summary(s)
    if len(result.decided) < people:
        click.echo(f"only {len(result.decided)} of {people} people got a decision", err=True)
        sys.exit(1)


main.add_command(board)  # also its own program: checkpoint-board (station/board/cli.py)
main.add_command(centre)  # also its own program: checkpoint-centre (station/centre/cli.py)


if __name__ == "__main__":
    main()
