"""Tracing at the centre against a real PostgreSQL: one code holder seen at two stations is linked, queries audited, no raw data stored.

The stations are real: a pushed district key (signed command through ``StationLink.handle``), the
real HC1 verifier on a code signed by a test issuer, the real SQLite store and outbox; the centre is
the real ``Ingestor`` writing to PostgreSQL; tracing is ``station.centre.tracing`` and the CLI.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from sim.issuer import new_issuer
from station.board.auth import hash_password
from station.centre import db, tracing
from station.centre.cli import centre
from station.centre.ingest import Ingestor
from station.codes.hc1 import Hc1Verifier
from station.codes.judge import holder_ref_fn
from station.codes.trace_key import key_id_of, trace_ref
from station.codes.trust_list import parse_certificates
from station.domain.model import Decision
from station.domain.screening import RECORDED_CODE_DETAIL
from station.link.command_auth import new_signing_key
from tests.support.centre_messages import deliveries
from tests.support.events import make_event
from tests.support.postgres import pg_server, pg_url
from tests.test_district_key import KEY1, Station, _signed

__all__ = ["pg_server", "pg_url"]

HOLDER = "DEMO-HOLDER-0042"
PLATE = "浙A12345"


def _messages(st: Station, code_record: dict[str, object], n: int, *, fever_at: int | None = None) -> list[tuple[str, bytes]]:
    """Record ``n`` screenings of the traced holder at this station (one a fever) and one vehicle; return the outbox."""
    for i in range(n):
        event = make_event(i, alarm=i == fever_at)
        event = dataclasses.replace(event, station_id=st.store.station_id, code=dict(code_record))
        st.store.record(event)
    st.store.record_vehicle(
        st.district.annotate_plate(
            {"vehicle_id": f"veh-{st.store.station_id}", "ts": time.time(), "type": "outsider_vehicle", "plate": PLATE}
        )
    )
    st.store.close()
    import sqlite3

    with sqlite3.connect(st.data / "events.db") as conn:
        rows = conn.execute("SELECT topic, payload FROM outbox WHERE acked_at IS NULL AND dropped_at IS NULL ORDER BY id").fetchall()
    return [(t, bytes(p)) for t, p in rows]


@pytest.fixture
def traced_db(pg_url: str, tmp_path: Path) -> tuple[str, str]:
    """Two stations that saw the same holder (a fever at the second) and the same outsider plate, ingested; return (url, payload)."""
    centre_key = new_signing_key()
    issuer = new_issuer()
    trust = parse_certificates([issuer.trust_entry()], strict=True)
    now = time.time()
    payload = issuer.issue("green", iat=now - 60, exp=now + 3600, holder=HOLDER)
    messages: list[tuple[str, bytes]] = []
    for name, fever_at in (("st-01", None), ("st-02", 1)):
        st = Station(tmp_path, centre_key, name)
        assert st.push(_signed(centre_key, 1, KEY1, station=name))["ok"] is True
        verdict = Hc1Verifier(trust.get, holder_ref=holder_ref_fn(os.urandom(32)), trace_ref=st.district.holder_ref).verify(payload, now)
        code: dict[str, object] = {
            "status": verdict.status.value,
            "reason": verdict.reason,
            "source": verdict.source,
            "subject_ref": verdict.subject_ref,
        }
        code.update({k: verdict.detail[k] for k in RECORDED_CODE_DETAIL if k in verdict.detail})
        messages += _messages(st, code, 2, fever_at=fever_at)
    writer = Ingestor(pg_url, lambda d: True)
    writer.open()
    result = writer.process(deliveries(messages))
    assert result is not None and result.inserted == len(messages)
    writer.stop()
    with psycopg.connect(pg_url) as conn:
        tracing.ensure_tracing_schema(conn)
        for name, role in (("tina", "tracer"), ("victor", "viewer")):
            db.add_user(conn, name, role, hash_password("correct horse battery"))
    return pg_url, payload


def test_the_same_holder_and_plate_at_two_stations_are_linked_and_every_query_is_audited(traced_db: tuple[str, str]) -> None:
    url, _ = traced_db
    ref = trace_ref(KEY1, "holder", HOLDER)
    key = tracing.DistrictKey(key_id_of(KEY1), KEY1)
    with psycopg.connect(url) as conn:
        rows = tracing.where_seen(conn, "tina", "contact tracing case 2026-117", tracing.refs_for("holder", HOLDER, [key]), days=1)
        assert {(r["site"], r["station"]) for r in rows} == {("gate-a", "st-01"), ("gate-a", "st-02")}
        assert len(rows) == 4, "two screenings at each station; the fever's alarm copy is the same passage"
        assert all(r["trace_ref"] == ref and r["trace_key"] == key_id_of(KEY1) for r in rows)
        cars = tracing.where_seen(conn, "tina", "outsider vehicle follow-up", tracing.refs_for("plate", "浙a·12345", [key]), days=1)
        assert [(r["station"], r["kind"], r["detail"]) for r in cars] == [
            ("st-01", "vehicle", "outsider_vehicle"),
            ("st-02", "vehicle", "outsider_vehicle"),
        ]
        start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        fevers = tracing.fever_passages(conn, "tina", "fever cluster at gate-a", "gate-a", "st-02", start, start + dt.timedelta(hours=2))
        assert [(r["decision"], r["trace_ref"]) for r in fevers] == [(Decision.DENY_FEVER.value, ref)]
        assert (
            tracing.fever_passages(conn, "tina", "fever cluster at gate-a", "gate-a", "st-01", start, start + dt.timedelta(hours=2)) == []
        )
        for user, reason, want in (
            ("tina", "", "reason"),
            ("tina", "  why  ", "reason"),
            ("victor", "a good long reason", "tracer or admin"),
            ("nobody", "a good long reason", "does not exist"),
        ):
            with pytest.raises(tracing.TraceRefused, match=want):
                tracing.where_seen(conn, user, reason, [ref], days=1)
        with pytest.raises(tracing.TraceRefused, match="32 hex"):
            tracing.where_seen(conn, "tina", "a good long reason", ["' OR 1=1 --"], days=1)
        audit = tracing.audit_log(conn)
    assert [(a["username"], a["query"], a["ok"]) for a in reversed(audit)] == [
        ("tina", "where_seen", True),
        ("tina", "where_seen", True),
        ("tina", "fever_passages", True),
        ("tina", "fever_passages", True),
        ("tina", "where_seen", False),
        ("tina", "where_seen", False),
        ("victor", "where_seen", False),
        ("nobody", "where_seen", False),
        ("tina", "where_seen", False),
    ]
    first = audit[-1]
    assert first["reason"] == "contact tracing case 2026-117" and first["rows"] == 4 and first["params"]["refs"] == [ref]
    assert audit[-2]["params"]["refs"] != [ref] and PLATE not in json.dumps(audit[-2]["params"], ensure_ascii=False)


def test_no_table_or_column_in_postgresql_holds_a_payload_holder_id_plate_or_key(traced_db: tuple[str, str]) -> None:
    url, payload = traced_db
    with psycopg.connect(url) as conn:
        key = tracing.DistrictKey(key_id_of(KEY1), KEY1)
        tracing.where_seen(conn, "tina", "a trace that is audited", tracing.refs_for("plate", PLATE, [key]), days=1)
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns c JOIN pg_class k ON k.relname = c.table_name "
            "WHERE table_schema = 'public' AND k.relkind IN ('r', 'p')"
        ).fetchall()
        assert len({t for t, _ in columns}) >= 6  # events (and its partitions), stations, users, trace_audit …
        needles = {"holder": HOLDER, "payload": payload[:40], "key": KEY1.hex(), "plate": PLATE, "plate_digits": "12345"}
        found = []
        for table, column in columns:
            for what, needle in needles.items():
                n = conn.execute(f'SELECT count(*) FROM "{table}" WHERE "{column}"::text LIKE %s', ("%" + needle + "%",)).fetchone()
                if n and n[0]:
                    found.append((table, column, what))
        stored_refs = conn.execute("SELECT DISTINCT trace_ref FROM events WHERE trace_ref IS NOT NULL").fetchall()
    assert found == []
    assert {r for (r,) in stored_refs} == {trace_ref(KEY1, "holder", HOLDER), trace_ref(KEY1, "plate", PLATE)}


def test_the_trace_cli_asks_for_the_password_exports_csv_and_refuses_without_a_reason(traced_db: tuple[str, str], tmp_path: Path) -> None:
    url, _ = traced_db
    runner = CliRunner()
    key_file = tmp_path / "district.key"
    made = runner.invoke(centre, ["district-key", "new", "--out", str(key_file), "--version", "2"])
    assert made.exit_code == 0 and os.stat(key_file).st_mode & 0o777 == 0o600
    (tmp_path / "k1.json").write_text(json.dumps({"version": 1, "key": KEY1.hex()}))
    args = ["trace", "seen", "--db", url, "--user", "tina", "--password-stdin", "--holder", HOLDER, "--days", "2"]
    args += ["--key-file", str(key_file), "--key-file", str(tmp_path / "k1.json"), "--csv"]
    ok = runner.invoke(centre, [*args, "--reason", "case 2026-117 contacts"], input="correct horse battery\n")
    assert ok.exit_code == 0, ok.output
    lines = ok.stdout.strip().splitlines()
    assert lines[0].startswith("ts,site,station,kind") and len(lines) == 5
    refused = runner.invoke(centre, args, input="correct horse battery\n")
    assert refused.exit_code == 2 and "reason is required" in refused.output
    wrong = runner.invoke(centre, [*args, "--reason", "case 2026-117 contacts"], input="wrong\n")
    assert wrong.exit_code == 2 and "wrong password" in wrong.output
    with psycopg.connect(url) as conn:
        assert [(a["ok"], a["error"] is None) for a in tracing.audit_log(conn)] == [(False, False), (True, True)]


@pytest.mark.slow
def test_the_same_demo_code_holder_at_two_real_demo_stations_is_linked_at_the_centre(pg_url: str, tmp_path: Path) -> None:
    """Two ``station demo`` runs (the real pipeline, the DEMO issuer's codes) with a district key; their outboxes ingested."""
    import sqlite3
    import subprocess
    import sys

    from station.codes.trace_key import DistrictKeys

    root = Path(__file__).resolve().parents[1]
    procs = []
    for name in ("st-a", "st-b"):
        data = tmp_path / name
        DistrictKeys(data).install(1, KEY1.hex())
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f'[station]\nsite = "gate-a"\nid = "{name}"\ndata_dir = "{data}"\n')
        out = (tmp_path / f"{name}.out").open("wb")
        argv = [sys.executable, "-m", "station.cli.station_main", "demo", "--fast", "--json", "--people", "2"]
        procs.append(
            subprocess.Popen([*argv, "--data-dir", str(data), "--config", str(cfg)], stdout=out, stderr=subprocess.STDOUT, cwd=root)
        )
    for p in procs:
        assert p.wait(240) == 0, (tmp_path / "st-a.out").read_text()[-2000:]
    messages: list[tuple[str, bytes]] = []
    for name in ("st-a", "st-b"):
        with sqlite3.connect(tmp_path / name / "events.sqlite3") as conn:
            messages += [(t, bytes(p)) for t, p in conn.execute("SELECT topic, payload FROM outbox ORDER BY id").fetchall()]
    assert not any(b"demo-person-0" in p for _, p in messages), "the holder id never leaves a station"
    writer = Ingestor(pg_url, lambda d: True)
    writer.open()
    writer.process(deliveries(messages))
    writer.stop()
    with psycopg.connect(pg_url) as conn:
        db.add_user(conn, "tina", "tracer", hash_password("correct horse battery"))
        tracing.ensure_tracing_schema(conn)
        key = tracing.DistrictKey(key_id_of(KEY1), KEY1)
        rows = tracing.where_seen(
            conn, "tina", "demo holder linked across stations", tracing.refs_for("holder", "demo-person-0", [key]), days=1
        )
    assert sorted(r["station"] for r in rows) == ["st-a", "st-b"]
    assert all(r["decision"] == "pass" and r["trace_key"] == key_id_of(KEY1) for r in rows)
