"""taskq's shared-secret signing (serializer ``hmac``): no certificates, taskq only.

For a fleet that is all taskq and would rather share one secret than run a small PKI. The body
is a JSON envelope (content type ``application/x-taskq-hmac``)::

    {"taskq_hmac": 1, "kid": "2024-06", "content_type": "application/json",
     "content_encoding": "utf-8", "body": "<base64 of the inner body>", "mac": "<hex>"}

The MAC covers the key id, the inner content type and encoding and the inner body (each length
prefixed, so no field can bleed into another), so the content type cannot be swapped for one
with a more dangerous decoder. ``kid`` names the key: a receiver holds several (rotation) and
the sender signs with one. Digests are compared in constant time. Celery cannot read this.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from kombu.serialization import dumps, loads
from kombu.utils.encoding import ensure_bytes

from taskq.exceptions import ImproperlyConfigured, SecurityError

__all__ = ["HMAC_CONTENT_TYPE", "MIN_KEY_BYTES", "HmacSerializer"]

HMAC_CONTENT_TYPE = "application/x-taskq-hmac"
VERSION = 1
MIN_KEY_BYTES = 16  # shorter secrets are guessable offline from one captured message


def _secret(kid: str, value: Any) -> bytes:
    if not isinstance(value, (str, bytes)) or not value:
        raise ImproperlyConfigured(f"HMAC key {kid!r} must be a non-empty str or bytes")
    secret = ensure_bytes(value)
    if len(secret) < MIN_KEY_BYTES:
        raise ImproperlyConfigured(
            f"HMAC key {kid!r} is {len(secret)} bytes; use at least {MIN_KEY_BYTES} (32 random bytes is good)"
        )
    return secret


def _prefixed(*fields: bytes) -> bytes:
    return b"".join(b"%d:%s" % (len(f), f) for f in fields)


class HmacSerializer:
    """Signs with ``(key_id, keys[key_id])``; verifies with whichever key the message names."""

    def __init__(
        self, key_id: str, keys: Mapping[str, Any], digest: str, serializer: str, accept: set[str]
    ) -> None:
        self.keys = {str(kid): _secret(str(kid), value) for kid, value in keys.items()}
        if key_id not in self.keys:
            raise ImproperlyConfigured(f"security_hmac_key_id {key_id!r} names no configured key")
        self.key_id = key_id
        if digest not in hashlib.algorithms_guaranteed or digest.startswith(("shake_", "md5", "sha1")):
            raise ImproperlyConfigured(
                f"security_digest {digest!r} is not usable for HMAC (use sha256 or sha512)"
            )
        self.digest = digest
        self.serializer = serializer
        self.accept = accept

    def _mac(self, key: bytes, kid: str, content_type: str, content_encoding: str, body: bytes) -> str:
        message = _prefixed(
            b"taskq-hmac-1", kid.encode(), content_type.encode(), content_encoding.encode(), body
        )
        return hmac.new(key, message, self.digest).hexdigest()

    def serialize(self, data: Any) -> str:
        content_type, content_encoding, body = dumps(data, serializer=self.serializer)
        body = ensure_bytes(body)
        envelope = {
            "taskq_hmac": VERSION,
            "kid": self.key_id,
            "content_type": content_type,
            "content_encoding": content_encoding,
            "body": base64.b64encode(body).decode("ascii"),
            "mac": self._mac(self.keys[self.key_id], self.key_id, content_type, content_encoding, body),
        }
        return json.dumps(envelope, separators=(",", ":"))

    def deserialize(self, data: bytes | str) -> Any:
        """Verify, then decode; anything wrong is a ``SecurityError`` (kombu wraps it in DecodeError)."""
        try:
            envelope = json.loads(data)
        except ValueError:
            raise SecurityError("HMAC-signed message: the envelope is not JSON") from None
        fields = ("kid", "content_type", "content_encoding", "body", "mac")
        if not isinstance(envelope, dict) or not all(isinstance(envelope.get(f), str) for f in fields):
            raise SecurityError("HMAC-signed message: the envelope lacks kid/content_type/.../mac")
        if envelope.get("taskq_hmac") != VERSION:
            raise SecurityError(
                f"HMAC-signed message: unknown envelope version {envelope.get('taskq_hmac')!r}"
            )
        kid, content_type, content_encoding = (
            envelope["kid"],
            envelope["content_type"],
            envelope["content_encoding"],
        )
        key = self.keys.get(kid)
        if key is None:
            raise SecurityError(f"HMAC-signed message: unknown key id {kid!r}")
        try:
            body = base64.b64decode(envelope["body"], validate=True)
        except (binascii.Error, ValueError):
            raise SecurityError("HMAC-signed message: the body is not base64") from None
        expected = self._mac(key, kid, content_type, content_encoding, body)
        if not hmac.compare_digest(expected.encode(), envelope["mac"].encode("utf-8", "replace")):
            raise SecurityError(f"HMAC-signed message: bad signature (key id {kid!r})")
        if content_type not in self.accept:
            raise SecurityError(
                f"signed body has content type {content_type!r}, not one of {sorted(self.accept)}"
            )
        return loads(body, content_type, content_encoding, accept=self.accept)
