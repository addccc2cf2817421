"""The platform's own certificate authority (``cryptography``), made once per state folder.

Everything that speaks TLS inside the platform (etcd's members to each other, every etcd
client) trusts only this CA. Keys are written 0600 and never leave the state folder.

- ``pki/ca.pem``, ``pki/ca.key``: the CA (10 years)
- ``pki/<name>.pem``, ``pki/<name>.key``: a leaf for a server and peer (its IP addresses
  and the shared name :data:`CLUSTER_NAME` in its subjectAltName) or a client

A leaf is made again when its addresses change or it is within 30 days of expiry; the CA
is kept, so the others stay valid.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from alwayson.util.credentials import write_private

CLUSTER_NAME = "etcd.alwayson"
"""The name every etcd member's certificate carries, so one name checks every endpoint
(clients connect to addresses and ask TLS for this name)."""

CA_DAYS = 3650
LEAF_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class TlsFiles:
    """What a TLS endpoint needs: the CA to trust and its own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        return self.ca.read_bytes(), self.key.read_bytes(), self.cert.read_bytes()


def pki_dir(state_dir: Path) -> Path:
    return state_dir / "pki"


def leaf_paths(state_dir: Path, name: str) -> TlsFiles:
    """Where ``name``'s certificate lives (made by :func:`ensure_leaf`)."""
    folder = pki_dir(state_dir)
    return TlsFiles(folder / "ca.pem", folder / f"{name}.pem", folder / f"{name}.key")


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, data)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_ca(
    state_dir: Path, platform: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    folder = pki_dir(state_dir)
    cert_path, key_path = folder / "ca.pem", folder / "ca.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"alwayson {platform} CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _current(path: Path, addresses: Sequence[str]) -> bool:
    """The leaf at ``path`` exists, names exactly ``addresses`` and is not about to expire."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not addresses
    have = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return have == set(addresses)


def ensure_leaf(
    state_dir: Path,
    platform: str,
    name: str,
    addresses: Sequence[str] = (),
    *,
    server: bool = True,
) -> TlsFiles:
    """A certificate for ``name`` signed by the platform's CA (made or kept).

    ``server``: for a member (server and client auth, its ``addresses`` and
    :data:`CLUSTER_NAME` as subjectAltName); otherwise a client certificate.
    """
    files = leaf_paths(state_dir, name)
    ca_cert, ca_key = ensure_ca(state_dir, platform)
    if files.key.exists() and _current(files.cert, addresses):
        return files
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server:
        alt: list[x509.GeneralName] = [x509.DNSName(CLUSTER_NAME), x509.DNSName("localhost")]
        alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(files.key, _key_pem(key))
    _write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


CLIENT = "client"


def client_files(state_dir: Path, platform: str) -> TlsFiles:
    """The one client certificate the platform's own processes use with etcd."""
    return ensure_leaf(state_dir, platform, CLIENT, server=False)


@functools.cache
def web_context() -> ssl.SSLContext:
    """The CA-verifying TLS context every HTTP client of the platform shares.

    httpx builds one per client unless given one, reading the whole CA bundle each time
    (50-100 ms on this machine): every CLI command and every controller start paid it
    once per client. Same bundle as httpx: ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set,
    else certifi's."""
    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())
