"""Issue HC1 health codes and the keys behind them, for the demo and the tests (DEMO ONLY).

A real station only *verifies*; codes are issued by the health authority's back end with keys the
station never sees. This module exists so the demo can show real signed green / yellow / red codes
and so the tests have vectors. The demo keys are derived deterministically from public strings
(below): anyone can recompute them, so they prove nothing and must never appear in a production
trust list. Their certificates say ``DEMO ONLY`` in the subject.

    python -m sim.issuer keys OUT_DIR        # demo issuer key + cert, trust list, trust-list signer
    python -m sim.issuer issue --colour green [--refresh 60] [--key issuer.pem --cert issuer.der]
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from station.codes import hc1
from station.codes.trust_list import certificate_entry, sign_document
from station.domain.model import CodeColour

DEMO_ISSUER_SEED = b"checkpoint-station DEMO ONLY health-code issuer key; never trust this key in production"
DEMO_TRUST_SIGNER_SEED = b"checkpoint-station DEMO ONLY trust-list signing key; never trust this key in production"
DEMO_ISSUER_NAME = "DEMO-ONLY"
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def derived_ec_key(seed: bytes) -> ec.EllipticCurvePrivateKey:
    """Return a P-256 key computed from ``seed``: reproducible, hence only for demos and tests."""
    scalar = int.from_bytes(hashlib.sha256(seed).digest(), "big") % (_P256_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP256R1())


def self_signed_cert(key: Any, common_name: str, days: int = 3650) -> bytes:
    """Return a self-signed X.509 certificate (DER) for ``key``; its SHA-256 gives the HC1 kid.

    Fixed dates, serial and RFC 6979 deterministic ECDSA: the same key gives the same certificate,
    hence the same kid, in every process (the demo's codes and trust list agree across runs).
    """
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "checkpoint-station DEMO ONLY"),
        ]
    )
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(common_name.encode()).digest()[:8], "big"))
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True if isinstance(key, ec.EllipticCurvePrivateKey) else None)
    )
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class Issuer:
    """A signing key with its certificate; ``issue`` makes the ``HC1:`` text a phone would show."""

    key: Any
    cert_der: bytes
    name: str = DEMO_ISSUER_NAME

    @property
    def kid(self) -> bytes:
        """Return the HC1 key id: the first 8 bytes of the certificate's SHA-256."""
        return hc1.kid_of(self.cert_der)

    def trust_entry(self) -> dict[str, str]:
        """Return this issuer's certificate as a trust-list entry."""
        return certificate_entry(self.cert_der)

    def issue(
        self,
        colour: CodeColour | str,
        *,
        iat: float,
        exp: float,
        refresh_s: int | None = None,
        holder: str | None = None,
        extra: dict[Any, Any] | None = None,
        kid: bytes | None = None,
        kid_protected: bool = True,
        valid_from: int | None = None,
        valid_until: int | None = None,
    ) -> str:
        """Return a signed ``HC1:`` code for ``colour`` valid from ``iat`` to ``exp``.

        ``kid`` overrides the key id (tests sign under a wrong one); ``kid_protected=False`` puts it in
        the unprotected header, as some issuers do.
        """
        claims = hc1.health_claims(
            colour,
            iat=int(iat),
            exp=int(exp),
            issuer=self.name,
            refresh_s=refresh_s,
            holder=holder,
            extra=extra,
            valid_from=valid_from,
            valid_until=valid_until,
        )
        return hc1.encode(claims, self.key, kid if kid is not None else self.kid, kid_protected=kid_protected)


def demo_issuer() -> Issuer:
    """Return the demo's ES256 issuer (DEMO ONLY; derived from a public string)."""
    key = derived_ec_key(DEMO_ISSUER_SEED)
    return Issuer(key, self_signed_cert(key, "DEMO ONLY health-code issuer"))


def demo_trust_signer() -> ec.EllipticCurvePrivateKey:
    """Return the demo's trust-list signing key (DEMO ONLY)."""
    return derived_ec_key(DEMO_TRUST_SIGNER_SEED)


def new_issuer(alg: str = "ES256", name: str = "TEST-ISSUER") -> Issuer:
    """Return a fresh random issuer (tests): ES256 (P-256) or PS256 (RSA-2048)."""
    key: Any = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else rsa.generate_private_key(65537, 2048)
    return Issuer(key, self_signed_cert(key, f"{name} {alg}"), name)


def trust_list_document(issuers: list[Issuer]) -> dict[str, Any]:
    """Return an unsigned trust-list document naming ``issuers``."""
    return {"certificates": [i.trust_entry() for i in issuers]}


def write_demo_trust_list(folder: Path) -> Path:
    """Write the demo's trust list (the DEMO ONLY issuer alone) as ``<folder>/demo-trust-list.json``; return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo-trust-list.json"
    doc = dict(trust_list_document([demo_issuer()]), note="DEMO ONLY: the demo issuer's key is derived from a public string")
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ CLI


@click.group()
def main() -> None:
    """Issue DEMO ONLY health codes and keys."""


@main.command("keys")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--version", "list_version", default=1, show_default=True, help="version of the signed trust list")
def keys_cmd(out_dir: Path, list_version: int) -> None:
    """Write the demo issuer key/cert, a trust list, and a signed (pushable) trust list."""
    out_dir.mkdir(parents=True, exist_ok=True)
    issuer = demo_issuer()
    pem = serialization.PrivateFormat.PKCS8
    (out_dir / "DEMO-ONLY-issuer-key.pem").write_bytes(
        issuer.key.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption())
    )
    (out_dir / "DEMO-ONLY-issuer-cert.der").write_bytes(issuer.cert_der)
    (out_dir / "trust-list.json").write_text(json.dumps(trust_list_document([issuer]), indent=1))
    signer = demo_trust_signer()
    (out_dir / "DEMO-ONLY-trust-signer-key.pem").write_bytes(
        signer.private_bytes(serialization.Encoding.PEM, pem, serialization.NoEncryption())
    )
    (out_dir / "DEMO-ONLY-trust-signer-pub.pem").write_bytes(
        signer.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    signed = sign_document([issuer.trust_entry()], list_version, signer)
    (out_dir / "trust-list-signed.json").write_text(json.dumps(signed, indent=1))
    click.echo(json.dumps({"dir": str(out_dir), "kid": issuer.kid.hex(), "note": "DEMO ONLY keys"}))


@main.command("issue")
@click.option("--colour", type=click.Choice([c.value for c in CodeColour]), required=True)
@click.option("--valid-s", default=86400, show_default=True, help="expiry, seconds from now")
@click.option("--age-s", default=0, show_default=True, help="issued this many seconds ago")
@click.option("--refresh", "refresh_s", type=int, default=None, help="dynamic code: refresh period (s)")
@click.option("--key", "key_file", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--cert", "cert_file", type=click.Path(exists=True, path_type=Path), default=None)
def issue_cmd(colour: str, valid_s: int, age_s: int, refresh_s: int | None, key_file: Path | None, cert_file: Path | None) -> None:
    """Print one HC1 code (the demo issuer's unless --key/--cert are given)."""
    if key_file and cert_file:
        issuer = Issuer(serialization.load_pem_private_key(key_file.read_bytes(), None), cert_file.read_bytes(), "CUSTOM")
    else:
        issuer = demo_issuer()
    now = time.time()
    click.echo(issuer.issue(colour, iat=now - age_s, exp=now + valid_s, refresh_s=refresh_s))


if __name__ == "__main__":
    main()
