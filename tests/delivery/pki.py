"""A throw-away certificate authority for tests, made with python3-cryptography."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Pki:
    """Files of one CA and one server certificate signed by it."""

    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    #: a client certificate (``make_pki(..., client=CN)``), e.g. a unit's for OpenVPN
    client_cert_pem: Path | None = None
    client_key_pem: Path | None = None


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(directory: Path, label: str, host: str = "127.0.0.1",
             client: str | None = None) -> Pki:
    """Create a CA and a server certificate for ``host`` (and one for ``client``)."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(f"{label} test CA"))
          .issuer_name(_name(f"{label} test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=90))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))])
    cert = (x509.CertificateBuilder().subject_name(_name(host)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=60))
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / f"{label}-ca.pem", directory / f"{label}-cert.pem",
              directory / f"{label}-key.pem")
    pki.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    if client is not None:
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_cert = (x509.CertificateBuilder().subject_name(_name(client))
                       .issuer_name(ca.subject).public_key(client_key.public_key())
                       .serial_number(x509.random_serial_number())
                       .not_valid_before(now - dt.timedelta(hours=1))
                       .not_valid_after(now + dt.timedelta(days=60))
                       .add_extension(x509.ExtendedKeyUsage(
                           [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                       .sign(ca_key, hashes.SHA256()))
        pki.client_cert_pem = directory / f"{label}-client-cert.pem"
        pki.client_key_pem = directory / f"{label}-client-key.pem"
        pki.client_cert_pem.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
        pki.client_key_pem.write_bytes(client_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return pki
