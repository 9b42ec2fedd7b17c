"""A local CA and a server certificate for localhost, made once and kept in `<data_dir>/tls/`.

Clients with sslmode=require accept any certificate; with sslmode=verify-full they need the CA
(`sslrootcert=<data_dir>/tls/ca.crt`, or the CA added to the system's trust store).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 397  # browsers and macOS refuse longer-lived server certificates
RENEW_BEFORE = datetime.timedelta(days=30)
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files in the TLS directory."""

    directory: Path

    ca_cert = property(lambda self: self.directory / "ca.crt")
    ca_key = property(lambda self: self.directory / "ca.key")
    server_cert = property(lambda self: self.directory / "server.crt")
    server_key = property(lambda self: self.directory / "server.key")


def ensure_tls(directory: Path) -> TlsFiles:
    """Create the CA and server certificate if missing; renew the server certificate near expiry."""
    files = TlsFiles(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not (files.ca_cert.is_file() and files.ca_key.is_file()):
        _write_ca(files)
    if not files.server_cert.is_file() or _needs_renewal(files.server_cert):
        _write_server(files)
    return files


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.server_cert, files.server_key)
    context.set_alpn_protocols(["postgresql"])  # what libpq 17+ offers; Postgres selects it too
    return context


def channel_binding_data(files: TlsFiles) -> bytes:
    """tls-server-end-point data (RFC 5929): the hash of our certificate, SHA-256 for an ECDSA-SHA256 one."""
    certificate = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _needs_renewal(path: Path) -> bool:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate.not_valid_after_utc - _now() < RENEW_BEFORE


def _write_ca(files: TlsFiles) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"neon-local CA {os.uname().nodename}")])
    builder = (
        _base(name, name, key.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    _write_key(files.ca_key, key)
    files.ca_cert.write_bytes(builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def _write_server(files: TlsFiles) -> None:
    ca_key = cast(ec.EllipticCurvePrivateKey, serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None))  # _write_ca's
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), *(x509.IPAddress(ipaddress.ip_address(a)) for a in SERVER_NAMES[1:])]
    builder = (
        _base(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), ca_cert.subject, key.public_key(), SERVER_DAYS)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    _write_key(files.server_key, key)
    files.server_cert.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def _base(subject, issuer, public_key, days: int) -> x509.CertificateBuilder:
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign, key_cert_sign=cert_sign, crl_sign=cert_sign, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False, decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
