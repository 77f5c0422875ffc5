"""Signed pushes from the centre (station centre push) to a real station link on mosquitto, audited in a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from station.board.auth import hash_password
from station.centre import db
from station.centre.cli import centre
from station.codes.trace_key import DistrictKeys, key_id_of
from station.link.command_auth import private_pem
from station.store import residents
from tests.support.command_rig import SITE, STATION, Rig
from tests.support.postgres import pg_server, pg_url

__all__ = ["pg_server", "pg_url"]

KEY = bytes(range(32))


@pytest.mark.slow
def test_an_admin_pushes_a_district_key_and_a_resident_list_and_each_push_is_audited_without_the_key_or_plates(
    pg_url: str, tmp_path: Path
) -> None:
    rig = Rig(tmp_path)
    try:
        signing = tmp_path / "centre.key"
        signing.write_bytes(private_pem(rig.key))
        key_file = tmp_path / "district.json"
        key_file.write_text(json.dumps({"version": 1, "key": KEY.hex()}))
        plates = tmp_path / "plates.json"
        plates.write_text(json.dumps({"plates": ["浙A12345", "浙B54321"], "version": 5}))
        with psycopg.connect(pg_url) as conn:
            db.ensure_schema(conn)
            db.add_user(conn, "ada", "admin", hash_password("correct horse battery"))
            db.add_user(conn, "victor", "viewer", hash_password("correct horse battery"))
        base = [
            "push",
            "--db",
            pg_url,
            "--password-stdin",
            "--mqtt",
            rig.broker.url,
            "--signing-key",
            str(signing),
            "--to",
            f"{SITE}/{STATION}",
        ]
        runner = CliRunner()
        ok = runner.invoke(
            centre,
            [
                *base,
                "--user",
                "ada",
                "--reason",
                "district key v1 rollout",
                "--command",
                "district-key",
                "--key-file",
                str(key_file),
                "--json",
            ],
            input="correct horse battery\n",
        )
        assert ok.exit_code == 0, ok.output
        assert json.loads(ok.stdout)[0]["result"]["key_id"] == key_id_of(KEY)
        assert DistrictKeys(rig.data).status()["key_id"] == key_id_of(KEY)
        again = runner.invoke(
            centre,
            [
                *base,
                "--user",
                "ada",
                "--reason",
                "district key v1 rollout",
                "--command",
                "district-key",
                "--key-file",
                str(key_file),
                "--json",
            ],
            input="correct horse battery\n",
        )
        assert again.exit_code == 1 and "not newer" in json.loads(again.stdout)[0]["error"]
        listed = runner.invoke(
            centre,
            [*base, "--user", "ada", "--reason", "weekly resident list", "--command", "resident-plates", "--args-file", str(plates)],
            input="correct horse battery\n",
        )
        assert listed.exit_code == 0, listed.output
        assert residents.version(residents.resident_path(rig.data)) == 5
        viewer = runner.invoke(
            centre,
            [*base, "--user", "victor", "--reason", "weekly resident list", "--command", "resident-plates", "--args-file", str(plates)],
            input="correct horse battery\n",
        )
        assert viewer.exit_code == 2 and "role admin" in viewer.output
        with psycopg.connect(pg_url) as conn:
            audit = conn.execute("SELECT actor, action, target, reason, detail FROM centre_audit ORDER BY id").fetchall()
            everything = conn.execute("SELECT string_agg(t::text, ' ') FROM centre_audit t").fetchone()
    finally:
        rig.close()
    assert [(a[0], a[1], a[2], a[4]["ok"]) for a in audit] == [
        ("ada", "push.district-key", f"{SITE}/{STATION}", True),
        ("ada", "push.district-key", f"{SITE}/{STATION}", False),
        ("ada", "push.resident-plates", f"{SITE}/{STATION}", True),
        ("victor", "push.resident-plates", None, False),
    ]
    assert audit[0][3] == "district key v1 rollout" and audit[0][4]["args"] == {"version": 1, "key_id": key_id_of(KEY)}
    assert audit[2][4]["args"] == {"version": 5, "plates": 2} and audit[2][4]["result"]["count"] == 2
    text = everything[0] if everything else ""
    assert KEY.hex() not in text and "浙A12345" not in text
