"""The trust list: which signer certificates a health code may be signed by.

File format (also what ``stationctl code verify --trust FILE`` reads)::

    {"certificates": [{"kid": "<base64 of 8 bytes>", "der": "<base64 DER X.509 certificate>"}]}

``kid`` must equal the first 8 bytes of the SHA-256 of ``der`` (an entry where it does not is
dropped and logged: a list must not be able to bind a key to someone else's kid).

The command centre pushes the list over MQTT (``cmd/trust-list``) as the same document plus
``"version": N`` and ``"signature"``: base64 of an ECDSA P-256 / SHA-256 signature (DER) by the
trust-list signing key over :func:`signed_bytes` — the canonical JSON (sorted keys, no spaces) of
``{"certificates": …, "version": N}``. The station knows the signing key's public key or
certificate from ``codes.trust_list_signer_file``. A push is accepted only if the signature
verifies, every certificate parses and ``N`` is newer than the stored version (no downgrade, so a
replayed old list cannot re-admit a revoked signer); otherwise the stored list stays.

Accepted lists are stored under ``<data_dir>/trust-list/`` (``vN.json`` and ``current.json``,
each written atomically). :class:`TrustStore` re-reads ``current.json`` when it changes, so a
running verifier uses a new list from its next code on, without a restart.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from station.codes.hc1 import kid_of
from station.ops.fileio import atomic_write

log = logging.getLogger("station.codes.trust_list")

TRUST_DIR = "trust-list"
CURRENT = "current.json"
MAX_FILE_BYTES = 4 * 1024 * 1024  # the EU list of every signer is ~1 MB
MAX_CERTIFICATES = 10_000

SignerKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
"""A key that may sign an HC1 code (ES256 or PS256)."""


class TrustListError(ValueError):
    """A list (or a push) that is refused; the message says why."""


@dataclass(frozen=True, slots=True)
class TrustList:
    """One loaded list: its version, the signer keys by kid, and the entries as read."""

    version: int
    keys: dict[bytes, SignerKey]  # kid → public key
    certificates: list[dict[str, str]]


def certificate_entry(cert_der: bytes) -> dict[str, str]:
    """Return the list entry for a signer's DER certificate (kid and DER, base64)."""
    return {"kid": base64.b64encode(kid_of(cert_der)).decode(), "der": base64.b64encode(cert_der).decode()}


def parse_certificates(entries: Any, *, strict: bool) -> dict[bytes, SignerKey]:
    """Return kid → public key for a list's ``certificates``.

    ``strict``: one bad entry refuses the whole list (pushes); otherwise bad entries are skipped
    with a log line (a local file with one broken entry still loads the rest).
    """
    if not isinstance(entries, list):
        raise TrustListError("certificates must be a list")
    if len(entries) > MAX_CERTIFICATES:
        raise TrustListError(f"more than {MAX_CERTIFICATES} certificates")
    keys: dict[bytes, SignerKey] = {}
    for i, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise TrustListError("entry is not an object")
            der_text, kid_text = entry.get("der"), entry.get("kid")
            if not isinstance(der_text, str) or not isinstance(kid_text, str):
                raise TrustListError("der and kid must be base64 strings")
            der = base64.b64decode(der_text, validate=True)
            kid = base64.b64decode(kid_text, validate=True)
            if kid != kid_of(der):
                raise TrustListError("kid is not the first 8 bytes of SHA-256(der)")
            key = x509.load_der_x509_certificate(der).public_key()
            if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
                raise TrustListError(f"a {type(key).__name__} cannot sign an HC1 code (ES256 or PS256 only)")
            keys[kid] = key
        except (TrustListError, binascii.Error, ValueError, UnsupportedAlgorithm) as exc:
            if strict:
                raise TrustListError(f"certificate {i}: {exc}") from None
            log.warning("trust list entry skipped index=%d error=%s", i, exc)
    return keys


def _read_json(path: Path) -> Any:
    """Read a JSON file of bounded size; any way it is unreadable is a :class:`TrustListError`."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TrustListError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise TrustListError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # bad UTF-8, bad JSON, huge numbers, nesting deeper than the parser
        raise TrustListError(f"{path}: not JSON ({type(exc).__name__})") from None


def load_file(path: Path) -> TrustList:
    """Load a trust-list file, plain (``{"certificates": …}``) or as stored after a push."""
    doc = _read_json(path)
    if not isinstance(doc, dict):
        raise TrustListError(f"{path}: not a JSON object")
    if "document" in doc:  # the stored form of a pushed list
        if doc.get("signature_verified") is not True:
            raise TrustListError(f"{path}: stored without a verified signature; not used")
        doc = doc["document"]
        if not isinstance(doc, dict):
            raise TrustListError(f"{path}: document is not an object")
    certs = doc.get("certificates")
    version = doc.get("version", 0)
    return TrustList(
        int(version) if isinstance(version, int) else 0,
        parse_certificates(certs, strict=False),
        list(certs) if isinstance(certs, list) else [],
    )


# ------------------------------------------------------------------------------------- signed pushes


def signed_bytes(document: dict[str, Any]) -> bytes:
    """Return the canonical JSON of a document's certificates and version: the bytes its signature covers."""
    try:
        return json.dumps(
            {"certificates": document.get("certificates"), "version": document.get("version")},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:  # keys that cannot be sorted, nesting, huge numbers
        raise TrustListError(f"document cannot be put in canonical form ({type(exc).__name__})") from None


def sign_document(certificates: list[dict[str, str]], version: int, private_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """Return a pushable list document, signed with the trust-list signing key."""
    doc: dict[str, Any] = {"version": version, "certificates": certificates}
    doc["signature"] = base64.b64encode(private_key.sign(signed_bytes(doc), ec.ECDSA(hashes.SHA256()))).decode()
    return doc


def load_signer_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load the trust-list signing key's public half from a PEM certificate or a PEM public key."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TrustListError(f"{path}: {exc.strerror or exc}") from None
    try:
        key: Any = x509.load_pem_x509_certificate(data).public_key()
    except (ValueError, UnsupportedAlgorithm):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise TrustListError(f"{path}: neither a PEM certificate nor a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TrustListError(f"{path}: the trust-list signer must be an EC (P-256) key")
    return key


def verify_document(document: Any, signer: ec.EllipticCurvePublicKey) -> dict[bytes, SignerKey]:
    """Check a pushed document's version and signature; return its keys, or raise :class:`TrustListError`."""
    if not isinstance(document, dict):
        raise TrustListError("document must be a JSON object")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise TrustListError("document.version must be an integer >= 1")
    signature_text = document.get("signature", "")
    if not isinstance(signature_text, str):
        raise TrustListError("document.signature is not a base64 string")
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (binascii.Error, ValueError):
        raise TrustListError("document.signature is not base64") from None
    if not signature:
        raise TrustListError("document.signature is missing")
    try:
        signer.verify(signature, signed_bytes(document), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise TrustListError("signature does not verify with the configured trust-list signer") from None
    return parse_certificates(document.get("certificates"), strict=True)


def trust_dir(data_dir: Path) -> Path:
    """Return the folder accepted lists are stored in."""
    return Path(data_dir) / TRUST_DIR


def stored_version(data_dir: Path) -> int:
    """Return the version of the accepted list in force, 0 when there is none (or it cannot be read)."""
    current = trust_dir(data_dir) / CURRENT
    if not current.exists():
        return 0
    try:
        version = _read_json(current).get("version", 0)
    except (TrustListError, AttributeError):
        return 0
    return version if type(version) is int else 0


def accept_push(data_dir: Path, document: Any, signer: ec.EllipticCurvePublicKey, now_wall: float | None = None) -> dict[str, Any]:
    """Verify a pushed list and store it; :class:`TrustListError` (nothing written) otherwise."""
    keys = verify_document(document, signer)
    version = int(document["version"])
    have = stored_version(data_dir)
    if version <= have:
        raise TrustListError(f"version {version} is not newer than the stored version {have}; the old list is kept")
    folder = trust_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    body = {
        "version": version,
        "received_at": now_wall if now_wall is not None else time.time(),
        "signature_verified": True,
        "document": document,
    }
    data = json.dumps(body, ensure_ascii=False, sort_keys=True, indent=1).encode("utf-8")
    for target in (folder / f"v{version}.json", folder / CURRENT):
        atomic_write(target, data, backup=False)
    log.info("trust list accepted version=%d previous=%d signers=%d", version, have, len(keys))
    return {"version": version, "previous_version": have, "signers": len(keys), "file": str(folder / f"v{version}.json")}


# ---------------------------------------------------------------------------------------- the store


class TrustStore:
    """The verifier's kid → public key look-up, following the newest accepted list.

    The pushed list (``<data_dir>/trust-list/current.json``) wins over the configured file once one
    was accepted: the command centre is the authority that can also *remove* a signer. The files are
    re-checked (one ``stat`` each) at most every ``check_s`` seconds, so a new list is used without a
    restart.
    """

    def __init__(self, data_dir: Path | None, configured: Path | None = None, check_s: float = 0.5) -> None:
        self.pushed = trust_dir(data_dir) / CURRENT if data_dir is not None else None
        self.configured = Path(configured) if configured else None
        self.check_s = check_s
        self._lock = threading.Lock()
        self._stamp: tuple[Any, ...] | None = None
        self._checked = float("-inf")
        self._list = TrustList(0, {}, [])
        self.source = "none"
        self.refresh(force=True)

    @staticmethod
    def _stat(path: Path | None) -> tuple[int, int] | None:
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def refresh(self, force: bool = False) -> None:
        """Re-read the list in force if its file changed (checked at most every ``check_s``, unless ``force``)."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._checked < self.check_s:
                return
            self._checked = now
            stamp = (self._stat(self.pushed), self._stat(self.configured))
            if stamp == self._stamp and not force:
                return
            self._stamp = stamp
            for path, source in ((self.pushed, "pushed"), (self.configured, "configured")):
                if path is None or not path.exists():
                    continue
                try:
                    self._list = load_file(path)
                except TrustListError as exc:
                    log.error("trust list not usable path=%s error=%s", path, exc)
                    continue
                self.source = source
                log.info("trust list loaded source=%s version=%d signers=%d", source, self._list.version, len(self._list.keys))
                return
            self._list, self.source = TrustList(0, {}, []), "none"
            log.warning(
                "no usable HC1 trust list (configured=%s, pushed=%s): every signed code is unknown_kid "
                "→ manual_check until one is provisioned or pushed",
                self.configured,
                self.pushed,
            )

    def __call__(self, kid: bytes) -> SignerKey | None:
        """Return the public key for ``kid`` in the list in force, or None when it is not a trusted signer."""
        self.refresh()
        return self._list.keys.get(kid)

    def stats(self) -> dict[str, Any]:
        """Return which list is in force: its source, version and number of signers."""
        return {"source": self.source, "version": self._list.version, "signers": len(self._list.keys)}
