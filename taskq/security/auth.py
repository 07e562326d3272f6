"""Celery's ``auth`` serializer: the inner body signed with an X.509 key, byte for byte as Celery 5.7.

Wire format (content type ``application/data``, encoding ``utf-8``): base64 of five fields
joined by ``b"\\x00\\x01"``: base64(signer id), base64(signature), inner content type, inner
content encoding, inner body. The signature covers the inner body only, so a receiver checks it
before any decoder sees the bytes; the task's headers (its name, id) are not covered, as in Celery.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any

from kombu.serialization import dumps, loads
from kombu.utils.encoding import ensure_bytes

from taskq.exceptions import SecurityError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.hashes import HashAlgorithm

    from taskq.security.certs import CertStore, Signer

__all__ = ["AUTH_CONTENT_ENCODING", "AUTH_CONTENT_TYPE", "AuthSerializer"]

AUTH_CONTENT_TYPE = "application/data"
AUTH_CONTENT_ENCODING = "utf-8"
SEPARATOR = b"\x00\x01"


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def _unb64(data: bytes | str, what: str) -> bytes:
    try:
        return base64.b64decode(ensure_bytes(data), validate=True)
    except (binascii.Error, ValueError):
        raise SecurityError(f"signed message: {what} is not base64") from None


class AuthSerializer:
    """Signs what ``serializer`` (``json`` by default) makes; verifies against the cert store."""

    def __init__(
        self,
        signer: Signer | None,
        store: CertStore,
        digest: HashAlgorithm,
        serializer: str,
        accept: set[str],
    ) -> None:
        self.signer = signer
        self.store = store
        self.digest = digest
        self.serializer = serializer
        #: inner content types a verified body may carry: a signature vouches for who sent the
        #: bytes, the receiver still decides which decoders it runs
        self.accept = accept

    def serialize(self, data: Any) -> str:
        if self.signer is None:
            raise SecurityError("this process has no security_key to sign with")
        content_type, content_encoding, body = dumps(data, serializer=self.serializer)
        body = ensure_bytes(body)
        fields = [
            _b64(self.signer.id.encode()),
            _b64(self.signer.sign(body)),
            content_type.encode(),
            content_encoding.encode(),
            body,
        ]
        return _b64(SEPARATOR.join(fields)).decode("ascii")

    def deserialize(self, data: bytes | str) -> Any:
        """Verify, then decode; anything wrong is a ``SecurityError`` (kombu wraps it in DecodeError)."""
        fields = _unb64(data, "the payload").split(SEPARATOR, 4)
        if len(fields) != 5:
            raise SecurityError("signed message: not Celery's auth format (5 fields expected)")
        signer_id = _unb64(fields[0], "the signer").decode("utf-8", "replace")
        signature = _unb64(fields[1], "the signature")
        content_type = fields[2].decode("utf-8", "replace")
        content_encoding = fields[3].decode("utf-8", "replace")
        body = fields[4]
        self.store.verify(signer_id, body, signature, self.digest)
        if content_type not in self.accept:
            raise SecurityError(
                f"signed body has content type {content_type!r}, not one of {sorted(self.accept)}"
            )
        return loads(body, content_type, content_encoding, accept=self.accept)
