"""Shared by the security tests: self-signed certificates made on the spot, and a clean kombu registry.

kombu's serializer registry is process-wide and pytest-xdist runs other modules in the same
process afterwards, so every test that calls ``setup_security`` undoes it (``signing_undone``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kombu.serialization import registry


def make_cert(
    directory: Path, name: str, password: bytes | None = None, days: float = 1
) -> tuple[Path, Path]:
    """An RSA key (encrypted with ``password``) and its self-signed certificate: (key, cert) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@contextmanager
def signing_undone() -> Iterator[None]:
    """Whatever ``setup_security`` registers or disables in kombu's registry is undone on the way out."""
    from taskq.security import reset_security

    disabled = set(registry._disabled_content_types)
    try:
        yield
    finally:
        reset_security()
        registry._disabled_content_types = disabled
