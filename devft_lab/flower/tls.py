"""Throw-away TLS material for a loopback federation: a CA and a server certificate.

For tests and trying TLS on one machine only. A real deployment uses certificates from your
own CA (or a public one) whose SAN names the address the SuperNodes dial; see README.md.
Keys are EC P-384, certificates valid for one day, written as PEM files.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files: CA certificate, server certificate and server key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_loopback_tls(folder: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TLSFiles:
    """Write ``ca.crt``, ``server.pem`` and ``server.key`` for ``hosts`` into ``folder``."""
    from cryptography import x509  # optional/heavy: cryptography (installed with flwr)
    from cryptography.hazmat.primitives import hashes, serialization  # optional/heavy: cryptography (installed with flwr)
    from cryptography.hazmat.primitives.asymmetric import ec  # optional/heavy: cryptography (installed with flwr)
    from cryptography.x509.oid import NameOID  # optional/heavy: cryptography (installed with flwr)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = name("devft-lab loopback CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP384R1())
    sans = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
    cert = (x509.CertificateBuilder().subject_name(name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    files = TLSFiles(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    files.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    files.server_key.chmod(0o600)
    return files
