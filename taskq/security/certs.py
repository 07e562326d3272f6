"""Keys and certificates for the ``auth`` serializer, loaded with ``cryptography``.

Every way a setup can be wrong (missing file, wrong key password, a non-RSA key, a key that is not
the certificate's, an empty or expired store) is an ``ImproperlyConfigured`` at setup, naming the
file: a worker that starts with a broken signing setup would refuse every message it receives.
Signatures are RSA-PSS with MGF1 and the longest salt, over the digest named by
``security_digest``, exactly as Celery 5.7 makes them, so either side verifies the other's.
"""

from __future__ import annotations

import datetime
import glob
import os
from typing import TYPE_CHECKING

from taskq.exceptions import ImproperlyConfigured, SecurityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
    from cryptography.hazmat.primitives.hashes import HashAlgorithm
    from cryptography.x509 import Certificate

__all__ = [
    "CertStore",
    "Signer",
    "cert_id",
    "digest_algorithm",
    "load_certificate",
    "load_private_key",
    "require_cryptography",
]

NO_CRYPTOGRAPHY = (
    "message signing with certificates needs the cryptography library: pip install 'taskq[auth]' "
    "(or pip install cryptography)"
)


def require_cryptography() -> None:
    """Fail at setup, with the command that fixes it, rather than at the first message."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise ImproperlyConfigured(NO_CRYPTOGRAPHY) from None


def digest_algorithm(name: str) -> HashAlgorithm:
    """``security_digest`` (``sha256``, ``sha512``...) as cryptography's hash object."""
    from cryptography.hazmat.primitives import hashes

    algorithm = getattr(hashes, str(name).upper().replace("-", ""), None)
    if not (isinstance(algorithm, type) and issubclass(algorithm, hashes.HashAlgorithm)):
        raise ImproperlyConfigured(
            f"security_digest {name!r} is not a digest cryptography knows (e.g. 'sha256')"
        )
    return algorithm()


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ImproperlyConfigured(f"cannot read the {what} {path!r}: {exc.strerror or exc}") from None


def load_private_key(path: str, password: str | bytes | None) -> RSAPrivateKey:
    """The PEM RSA key in ``path`` (``security_key``), decrypted with ``security_key_password``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    data = _read(path, "private key (security_key)")
    secret = password.encode() if isinstance(password, str) else password
    try:
        key = serialization.load_pem_private_key(data, password=secret or None)
    except TypeError as exc:  # encrypted without a password given, or a password for a plain key
        raise ImproperlyConfigured(f"private key {path!r}: {exc} (see security_key_password)") from None
    except ValueError as exc:  # a wrong password, or not a PEM key at all
        raise ImproperlyConfigured(
            f"cannot load the private key {path!r}: wrong security_key_password or not a PEM key ({exc})"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ImproperlyConfigured(
            f"private key {path!r} is not an RSA key (Celery's auth signs with RSA only)"
        )
    return key


def load_certificate(path: str) -> Certificate:
    """The PEM X.509 certificate in ``path``; RSA only and not expired, as Celery requires."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509 import load_pem_x509_certificate

    data = _read(path, "certificate")
    try:
        cert = load_pem_x509_certificate(data)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{path!r} is not a PEM certificate: {exc}") from None
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise ImproperlyConfigured(
            f"certificate {path!r} does not hold an RSA key (Celery's auth verifies RSA only)"
        )
    if _expired(cert):
        raise ImproperlyConfigured(
            f"certificate {path!r} ({cert_id(cert)}) expired on {cert.not_valid_after_utc}"
        )
    return cert


def cert_id(cert: Certificate) -> str:
    """Celery's signer id: the issuer's attribute values and the serial number, space-separated."""
    return " ".join([*(str(attr.value) for attr in cert.issuer), str(cert.serial_number)])


def _expired(cert: Certificate) -> bool:
    return datetime.datetime.now(datetime.timezone.utc) >= cert.not_valid_after_utc


class Signer:
    """Signs with the private key; its id is that of the certificate the receivers hold."""

    def __init__(
        self, key: RSAPrivateKey, cert: Certificate, digest: HashAlgorithm, key_path: str = ""
    ) -> None:
        if key.public_key().public_numbers() != _rsa_public(cert).public_numbers():
            raise ImproperlyConfigured(
                f"the private key {key_path!r} (security_key) does not belong to the certificate "
                f"{cert_id(cert)!r} (security_certificate)"
            )
        self.key, self.id, self.digest = key, cert_id(cert), digest

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric import padding

        pss = padding.PSS(mgf=padding.MGF1(self.digest), salt_length=padding.PSS.MAX_LENGTH)
        return self.key.sign(data, pss, self.digest)


def _rsa_public(cert: Certificate) -> RSAPublicKey:
    return cert.public_key()  # type: ignore[return-value]  # load_certificate made sure it is RSA


class CertStore:
    """The trusted certificates (``security_cert_store``: a directory, a file, or a glob)."""

    def __init__(self, path: str) -> None:
        pattern = os.path.join(path, "*") if os.path.isdir(path) else path
        self.certs: dict[str, Certificate] = {}
        for name in sorted(glob.glob(pattern)):
            cert = load_certificate(name)
            ident = cert_id(cert)
            if ident in self.certs:
                raise ImproperlyConfigured(f"certificate store {path!r} holds {ident!r} twice")
            self.certs[ident] = cert
        if not self.certs:
            raise ImproperlyConfigured(
                f"certificate store {path!r} (security_cert_store) holds no certificate"
            )

    def verify(self, signer: str, data: bytes, signature: bytes, digest: HashAlgorithm) -> None:
        """Raise ``SecurityError`` unless ``signature`` is ``signer``'s over ``data``."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import padding

        cert = self.certs.get(signer)
        if cert is None:
            raise SecurityError(f"signed by an unknown certificate {signer!r}")
        if _expired(cert):
            raise SecurityError(f"signed with the expired certificate {signer!r}")
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=padding.PSS.MAX_LENGTH)
        try:
            _rsa_public(cert).verify(signature, data, pss, digest)
        except InvalidSignature:
            raise SecurityError(f"bad signature (signer {signer!r})") from None
