"""atomic_write keeps an existing file's mode, owner and group (and gives the .bak the same), gives a new
file 0640 whatever the umask, and every writer of station.toml / the resident plate list uses it."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from station.cli.stationctl import main as stationctl
from station.link.handlers import set_config_value
from station.ops.fileio import NEW_FILE_MODE, atomic_write
from station.store import residents

ROOT = os.geteuid() == 0


def _meta(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def _other_owner() -> tuple[int, int]:
    """An owner and group that are not root's: nobody / nogroup (or the first non-root ones)."""
    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        uid = next(p.pw_uid for p in pwd.getpwall() if p.pw_uid != 0)
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = next(g.gr_gid for g in grp.getgrall() if g.gr_gid != 0)
    return uid, gid


@pytest.fixture
def wide_umask() -> Iterator[None]:
    old = os.umask(0)  # a caller whose umask would make new files world-writable
    try:
        yield
    finally:
        os.umask(old)


def _no_temp_left(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_a_new_file_gets_0640_not_the_callers_umask(tmp_path: Path, wide_umask: None) -> None:
    target = tmp_path / "new.toml"
    atomic_write(target, "a = 1\n")
    assert target.read_text() == "a = 1\n"
    assert _meta(target)[0] == NEW_FILE_MODE == 0o640
    assert not (tmp_path / "new.toml.bak").exists()
    _no_temp_left(tmp_path)


def test_mode_is_kept_and_the_bak_holds_the_old_content_with_the_same_mode(tmp_path: Path, wide_umask: None) -> None:
    target = tmp_path / "station.toml"
    target.write_text("old\n")
    target.chmod(0o600)
    (tmp_path / "station.toml.bak").write_text("older\n")
    (tmp_path / "station.toml.bak").chmod(0o666)  # a stale .bak's own mode does not survive either
    atomic_write(target, "new\n")
    bak = tmp_path / "station.toml.bak"
    assert target.read_text() == "new\n" and bak.read_text() == "old\n"
    assert _meta(target) == _meta(bak) and _meta(target)[0] == 0o600
    # bytes and backup=False
    atomic_write(target, b"newer\n", backup=False)
    assert target.read_bytes() == b"newer\n" and bak.read_text() == "old\n" and _meta(target)[0] == 0o600
    _no_temp_left(tmp_path)


def test_a_symlinked_config_stays_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text("x = 1\n")
    real.chmod(0o640)
    link = tmp_path / "station.toml"
    link.symlink_to(real)
    atomic_write(link, "x = 2\n")
    assert link.is_symlink() and real.read_text() == "x = 2\n" and _meta(real)[0] == 0o640
    assert (tmp_path / "real.toml.bak").read_text() == "x = 1\n"


@pytest.mark.skipif(not ROOT, reason="giving a file another owner needs root")
def test_stationctl_config_set_keeps_0600_owner_and_group_of_file_and_bak(tmp_path: Path, wide_umask: None) -> None:
    uid, gid = _other_owner()
    cfg = tmp_path / "station.toml"
    cfg.write_text("# site\n[screening]\nfever_threshold_c = 37.3  # notice 12\n")
    os.chown(cfg, uid, gid)
    cfg.chmod(0o600)
    before = _meta(cfg)
    assert before == (0o600, uid, gid)
    r = CliRunner().invoke(stationctl, ["--config", str(cfg), "config", "set", "screening.fever_threshold_c", "37.6"])
    assert r.exit_code == 0, r.output
    assert "fever_threshold_c = 37.6  # notice 12" in cfg.read_text()
    assert _meta(cfg) == before, "stationctl run as root must not take the file over"
    bak = tmp_path / "station.toml.bak"
    assert "37.3" in bak.read_text() and _meta(bak) == before
    _no_temp_left(tmp_path)

    # The remote set-threshold command writes through the same function.
    set_config_value(cfg, "screening.fever_threshold_c", 37.7)
    assert "37.7" in cfg.read_text() and _meta(cfg) == before and _meta(bak) == before


@pytest.mark.skipif(not ROOT, reason="giving a file another owner needs root")
def test_resident_plate_list_keeps_the_service_accounts_ownership(tmp_path: Path, wide_umask: None) -> None:
    uid, gid = _other_owner()
    plates = tmp_path / "resident_plates.txt"
    residents.save(plates, ["浙A12345"])
    assert _meta(plates)[0] == NEW_FILE_MODE
    os.chown(plates, uid, gid)
    plates.chmod(0o660)
    residents.save(plates, ["浙A12345", "沪B67890"], list_version=3)  # e.g. `sudo stationctl plates add`
    assert _meta(plates) == (0o660, uid, gid)
    assert "沪B67890" in plates.read_text() and not (tmp_path / "resident_plates.txt.bak").exists()
    _no_temp_left(tmp_path)


@pytest.fixture
def request_cleanup() -> Iterator[list[Path]]:
    import shutil

    folders: list[Path] = []
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(not ROOT, reason="switches to the nobody user, which needs root")
def test_a_user_who_cannot_keep_the_owner_gets_a_message_and_the_file_is_untouched(request_cleanup: list[Path]) -> None:
    import shutil
    import subprocess
    import sys

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("no setpriv")
    import tempfile

    uid, gid = _other_owner()
    # pytest's own temp folders are root-only; this one the other user can reach.
    work = Path(tempfile.mkdtemp(prefix="atomic-owner-", dir="/tmp"))
    request_cleanup.append(work)
    work.chmod(0o777)  # the user may create the temp file, but cannot give it root's ownership
    cfg = work / "station.toml"
    cfg.write_text("[screening]\nfever_threshold_c = 37.3  # site rule\n")
    cfg.chmod(0o644)
    before = cfg.read_bytes(), _meta(cfg)
    stationctl_bin = Path(sys.executable).with_name("stationctl")
    as_other = [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    probe = subprocess.run([*as_other, str(stationctl_bin), "--help"], capture_output=True, timeout=60, check=False)
    if probe.returncode != 0:
        pytest.skip("the checkout is not readable by another user here")
    r = subprocess.run(
        [*as_other, str(stationctl_bin), "--config", str(cfg), "config", "set", "screening.fever_threshold_c", "37.6"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "cannot keep the owner" in r.stderr and "unchanged" in r.stderr, r.stderr
    assert (cfg.read_bytes(), _meta(cfg)) == before
    assert not list(work.glob(".station.toml.*")), "no temp file is left behind"


def test_private_files_are_0600_new_and_lose_group_and_other_bits(tmp_path: Path, wide_umask: None) -> None:
    fresh = tmp_path / "salt"
    atomic_write(fresh, "ab" * 32, backup=False, private=True)
    assert _meta(fresh)[0] == 0o600 and fresh.read_text() == "ab" * 32
    loose = tmp_path / "board-users.json"
    loose.write_text("{}")
    os.chmod(loose, 0o664)
    atomic_write(loose, '{"users": []}', backup=False, private=True)
    assert _meta(loose)[0] == 0o600 and loose.read_text() == '{"users": []}'
    assert not (tmp_path / "board-users.json.bak").exists()


def test_every_secret_and_list_writer_goes_through_atomic_write(tmp_path: Path, wide_umask: None) -> None:
    from station.codes.judge import station_salt
    from station.ops.runtime import STATUS_NAME, write_runtime_status

    salt = station_salt(tmp_path)
    written = list((tmp_path).rglob("salt"))
    assert len(salt) == 32 and len(written) == 1 and _meta(written[0])[0] == 0o600
    write_runtime_status(tmp_path, {"state": "running"})
    assert _meta(tmp_path / STATUS_NAME)[0] == 0o644, "readable by stationctl under another user, not the umask's 0666"
    assert not [p for p in tmp_path.rglob("*.tmp")], "no temp file left behind"
