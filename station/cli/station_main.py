"""``station``: the daemon (``station run``) and the hardware-free demo (``station demo``).

Exit codes: 0 done, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from station.config import ConfigError, StationConfig, load_config
from station.logs import configure

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
@click.option("--override", "overrides", multiple=True, type=click.Path(path_type=Path, dir_okay=False), help="Extra TOML layered on top (e.g. calibration.toml)")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help="Overrides station.data_dir")
def run(config: Path, overrides: tuple[Path, ...], data_dir: Path | None) -> None:
    """Run the station on the devices named in the configuration (systemd ExecStart)."""
    from station.app import StationApp

    cfg = _load(config, overrides)
    configure(cfg.logging.level)
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
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Start from this config instead of the defaults")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), default="WARNING", show_default=True)
def demo(people: int, data_dir: Path | None, mqtt_url: str | None, fast: bool, as_json: bool, config: Path | None, log_level: str) -> None:
    """Run the real pipeline against an emulated thermal module, a replayed camera and mock GPIO."""
    from station.app import default_data_dir
    from station.demo import DemoRun, human_line, json_line, print_summary, summary

    configure(log_level)
    cfg = _load(config, ())
    if mqtt_url:
        try:
            cfg.mqtt.url = mqtt_url
        except ValueError as exc:
            click.echo(f"--mqtt {mqtt_url!r}: {exc}", err=True)
            sys.exit(2)
    data_dir = data_dir or (default_data_dir() / "demo")
    out = sys.stdout
    if not as_json:
        click.echo(f"checkpoint station demo: {people} people, data in {data_dir}", err=False)

    def printer(person, decided) -> None:  # type: ignore[no-untyped-def]
        out.write((json_line(person, decided) if as_json else human_line(person, decided)) + "\n")
        out.flush()

    run_ = DemoRun(cfg, people=people, data_dir=data_dir, fast=fast, on_decided=printer)
    try:
        result = run_.run()
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


if __name__ == "__main__":
    main()
