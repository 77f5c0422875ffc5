"""Every ``stationctl`` verb (and the short ``station`` verbs) on a bare laptop: an answer, never a traceback.

The commands are enumerated from the click tree, so a new verb is covered without touching this file.
Each runs with plausible minimal arguments (what its required parameters ask for) in an empty HOME
and working directory, with ``CHECKPOINT_CONFIG`` naming a file that does not exist, no daemon, no
devices and no broker. A few go through the installed entry point in a subprocess; the bulk through
click's runner, for speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from station.cli.station_main import main as station_main
from station.cli.stationctl import main as stationctl

ROOT = Path(__file__).resolve().parents[1]
GARBAGE = b"\x00\xffnot what this option expects\n\x1b[2J"
# A password prompt must never wait on a terminal here: these read it from (empty) stdin instead.
EXTRA_ARGS = {("board-user", "add"): ["--password-stdin"]}
# Long-running by design (they serve until stopped): exercised by the daemon and demo tests.
LONG_RUNNING = {("demo",)}


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from leaf_commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def value_for(param: click.Parameter, tmp: Path) -> str:
    """A plausible value for a required parameter: an existing junk file where one must exist, else a fresh path or a word."""
    t = param.type
    if isinstance(t, click.Path):
        if t.exists:
            if t.dir_okay and not t.file_okay:
                d = tmp / f"dir-{param.name}"
                d.mkdir(exist_ok=True)
                return str(d)
            f = tmp / f"junk-{param.name}"
            f.write_bytes(GARBAGE)
            return str(f)
        return str(tmp / f"new-{param.name}")
    if isinstance(t, click.Choice):
        return str(t.choices[0])
    if isinstance(t, (click.IntRange, click.FloatRange)):
        return str(t.min if t.min is not None else 1)
    if t in (click.INT, click.FLOAT):
        return "1"
    if t.name == "TIME":
        return "1d"
    if param.name and "mqtt" in param.name:
        return "mqtt://127.0.0.1:9"  # nothing listens on the discard port
    return "x"


def minimal_args(path: tuple[str, ...], cmd: click.Command, tmp: Path) -> list[str]:
    args: list[str] = []
    for p in cmd.params:
        if not p.required:
            continue
        if isinstance(p, click.Argument):
            args.append(value_for(p, tmp))
        else:
            args += [p.opts[0], value_for(p, tmp)]
    return [*path, *args, *EXTRA_ARGS.get(path, [])]


@pytest.fixture
def bare_laptop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str | None]:
    """An empty HOME and cwd, no config file, no station environment; returns the environment to run in."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("CHECKPOINT_", "XDG_"))}
    env.update(
        HOME=str(home),
        CHECKPOINT_CONFIG=str(tmp_path / "etc" / "checkpoint" / "station.toml"),
        EDITOR="true",  # `config edit`: an editor that changes nothing
        VISUAL=None,
        NOTIFY_SOCKET=None,
        RUNTIME_DIRECTORY=None,
    )
    return env


def assert_no_traceback(argv: list[str], code: int | None, stdout: str, stderr: str) -> None:
    shown = f"{argv}: exit {code}\nstdout: {stdout[-2000:]}\nstderr: {stderr[-2000:]}"
    assert "Traceback" not in stdout + stderr, shown
    assert code in (0, 1, 2, 3), shown
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) <= 4, shown  # a usage error is usage + hint + the one line that says what is wrong
    if code != 0:
        assert lines or stdout.strip(), f"{shown}\n(a failure must say why)"


@pytest.mark.slow
def test_every_stationctl_command_answers_without_a_traceback(tmp_path: Path, bare_laptop: dict[str, str | None]) -> None:
    runner = CliRunner()
    commands = list(leaf_commands(stationctl))
    assert len(commands) >= 40  # the tree was walked, not a stub
    for path, cmd in commands:
        argv = minimal_args(path, cmd, tmp_path)
        result = runner.invoke(stationctl, argv, env=bare_laptop, input="")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            tb = "".join(traceback.format_exception(result.exception))
            pytest.fail(f"{argv} raised:\n{tb}\noutput: {result.output}")
        assert_no_traceback(argv, result.exit_code, result.stdout, result.stderr)


def test_short_station_verbs_answer_without_a_traceback(tmp_path: Path, bare_laptop: dict[str, str | None]) -> None:
    runner = CliRunner()
    missing = str(tmp_path / "nowhere" / "station.toml")
    cases = {
        ("run",): ["--config", missing],
        ("board",): ["--mqtt", "mqtt://127.0.0.1:9", "--data-dir", str(tmp_path / "board")],  # no users: refused
        # The centre: refused before any database is reached (a bad --listen, a bad --day, an empty password).
        ("centre", "run"): ["--mqtt", "mqtt://127.0.0.1:9", "--db", "postgresql://nobody@127.0.0.1:9/x", "--listen", "nowhere"],
        ("centre", "report"): ["--db", "postgresql://nobody@127.0.0.1:9/x", "--day", "yesterday"],
        ("centre", "user", "add"): ["someone", "--role", "viewer", "--password-stdin", "--db", "postgresql://nobody@127.0.0.1:9/x"],
        ("centre", "tree", "check"): [str(tmp_path / "nowhere" / "tree.toml")],
        ("centre", "tree", "load"): [str(tmp_path / "nowhere" / "tree.toml"), "--db", "postgresql://nobody@127.0.0.1:9/x"],
        ("centre", "tree", "show"): [],  # no --db
        # Tracing, reports, forecast, fleet, pushes (docs/centre-tracing.md): refused before the database too.
        ("centre", "trace", "seen"): ["--db", "postgresql://nobody@127.0.0.1:9/x", "--user", "u"],  # nothing to look for
        ("centre", "trace", "fever"): ["--db", "postgresql://nobody@127.0.0.1:9/x", "--user", "u", "--site", "s", "--station", "x"]
        + ["--from", "yesterday", "--to", "now"],
        ("centre", "district-key", "new"): ["--out", str(tmp_path), "--version", "1"],  # a directory
        ("centre", "reports"): ["--db", "postgresql://nobody@127.0.0.1:9/x"],  # neither --day nor --week
        ("centre", "forecast"): ["--db", "postgresql://nobody@127.0.0.1:9/x", "--station", "x"],  # no --site
        ("centre", "fleet"): [],  # no --db
        ("centre", "repairs"): [],  # no --db
        ("centre", "push"): ["--db", "postgresql://nobody@127.0.0.1:9/x", "--user", "u", "--reason", "x", "--mqtt", "mqtt://127.0.0.1:9"]
        + ["--signing-key", str(tmp_path / "none.key"), "--command", "set-threshold"],  # a reason too short
    }
    assert {p for p, _ in leaf_commands(station_main)} == set(cases) | LONG_RUNNING
    for path, extra in cases.items():
        argv = [*path, *extra]
        result = runner.invoke(station_main, argv, env=bare_laptop, input="")
        assert result.exception is None or isinstance(result.exception, SystemExit), (argv, result.exception)
        assert_no_traceback(argv, result.exit_code, result.stdout, result.stderr)
        assert result.exit_code == 2, (argv, result.output)


def entry_point(name: str) -> str:
    script = Path(sys.executable).parent / name
    if not script.exists():
        pytest.skip(f"{name} is not installed in this environment (pip install -e .)")
    return str(script)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["status"], "no event database"),
        (["outbox", "flush", "--data-dir", "{tmp}/data"], "no event database"),
        (["--data-dir", "{tmp}/data", "data", "export"], "no event database"),
        (["config", "validate"], "cannot read"),
        (["logs"], "logging.file"),
        (["cmd", "sign", "--key", "{tmp}/missing.key", "--site", "s", "--station", "x", "--command", "open-gate", "--by", "me"], "--key"),
        (["--json", "logs"], "no JSON output"),
        (["test", "buzzer"], "cannot open the GPIO pins"),
        (["test", "camera"], "/dev/checkpoint-no-such-camera does not exist"),
    ],
)
def test_installed_stationctl_says_what_is_missing(tmp_path: Path, bare_laptop: dict[str, str | None], argv: list[str], says: str) -> None:
    env = {k: v for k, v in os.environ.items() if bare_laptop.get(k, "") is not None}
    env.update({k: v for k, v in bare_laptop.items() if v is not None})
    env["CHECKPOINT_CAMERA__DEVICE"] = "/dev/checkpoint-no-such-camera"  # not the laptop's own webcam
    argv = [a.format(tmp=tmp_path) for a in argv]
    r = subprocess.run([entry_point("stationctl"), *argv], env=env, cwd=tmp_path / "work", capture_output=True, text=True, timeout=60)
    assert_no_traceback(argv, r.returncode, r.stdout, r.stderr)
    assert r.returncode in (1, 2)
    assert says in r.stdout + r.stderr, (r.stdout, r.stderr)


@pytest.mark.slow  # about a second: kept out of the fast loop
def test_calibrate_dry_run_writes_nothing_even_where_the_config_dir_is_missing(tmp_path: Path, bare_laptop: dict[str, str | None]) -> None:
    readings = tmp_path / "readings.csv"
    readings.write_text("skin_c,reference_c\n35.1,36.9\n35.4,37.1\n34.9,36.8\n35.6,37.3\n")
    env = {k: v for k, v in os.environ.items() if bare_laptop.get(k, "") is not None}
    env.update({k: v for k, v in bare_laptop.items() if v is not None})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = subprocess.run(
        [entry_point("stationctl"), "calibrate", "thermal", "--readings", str(readings), "--dry-run"],
        env=env,
        cwd=tmp_path / "work",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "calibration_version" in r.stdout and "offset_c" in r.stdout
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not (tmp_path / "etc").exists()
    # Without --dry-run the missing directory is a one-line refusal that says what to do.
    r = subprocess.run(
        [entry_point("stationctl"), "calibrate", "thermal", "--readings", str(readings)],
        env=env,
        cwd=tmp_path / "work",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith(f"cannot write {tmp_path / 'etc' / 'checkpoint' / 'calibration.toml'}")
    assert "--out" in r.stderr
    assert not (tmp_path / "etc").exists()


def test_board_has_its_own_entry_point() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["checkpoint-board"].partition(":")
    main = getattr(import_module(module), attr)
    r = subprocess.run([sys.executable, "-c", f"import {module}; {module}.{attr}()", "--help"], capture_output=True, text=True, timeout=60)
    assert callable(main)
    assert r.returncode == 0, r.stderr
    assert "--mqtt" in r.stdout and "--users" in r.stdout
