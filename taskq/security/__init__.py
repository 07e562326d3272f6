"""Message signing: Celery's certificate ``auth`` serializer and taskq's shared-secret ``hmac``.

Both are kombu serializers wrapping an inner one (``json``), so signing reaches every message that
goes through the task serializer: tasks, retries, chain links, remote control. kombu's registry is
process-wide, so, as in Celery, a process signs with one setup; call ``app.setup_security()`` where
the app is defined, so that workers, clients and ``taskq inspect`` all load it. See docs/security.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kombu.serialization import disable_insecure_serializers, prepare_accept_content, registry

from taskq.exceptions import ImproperlyConfigured
from taskq.security.auth import AUTH_CONTENT_ENCODING, AUTH_CONTENT_TYPE, AuthSerializer
from taskq.security.hmac_auth import HMAC_CONTENT_TYPE, HmacSerializer

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.config import Settings

__all__ = ["SIGNING_SERIALIZERS", "disable_untrusted_serializers", "reset_security", "setup_security"]

#: serializer name -> content type, for the two signing serializers
SIGNING_SERIALIZERS = {"auth": AUTH_CONTENT_TYPE, "hmac": HMAC_CONTENT_TYPE}
_NAME_OF = {ctype: name for name, ctype in SIGNING_SERIALIZERS.items()}

SETTING_MISSING = (
    "message signing needs the task serializer and the accepted content to be signed ones, or an "
    "unsigned message would still run:\n"
    "    task_serializer = 'auth'      (or 'hmac' for taskq's shared-secret mode)\n"
    "    accept_content = ['auth']     (or ['hmac']; both while migrating from one to the other)\n"
    "got task_serializer={serializer!r}, accept_content={accept!r}"
)

_saved: dict[str, Any] = {}


def setup_security(
    app: App,
    allowed_serializers: Iterable[str] | None = None,
    key: str | None = None,
    key_password: str | bytes | None = None,
    cert: str | None = None,
    store: str | None = None,
    digest: str | None = None,
    serializer: str = "json",
) -> None:
    """Register the signing serializer(s) the config names, as Celery's ``setup_security``.

    The arguments override ``security_key``, ``security_key_password``, ``security_certificate``,
    ``security_cert_store`` and ``security_digest``; ``serializer`` is the inner one. Like Celery,
    every other deserializer is disabled process-wide except ``allowed_serializers``.
    """
    conf = app.conf
    modes = _signing_modes(conf)
    inner_accept = prepare_accept_content([serializer])
    digest = digest or conf.security_digest or "sha256"
    _save_registry()
    disable_insecure_serializers(list(allowed_serializers) if allowed_serializers is not None else None)
    if "auth" in modes:
        auth = _auth_serializer(conf, key, key_password, cert, store, digest, serializer, inner_accept)
        registry.register("auth", auth.serialize, auth.deserialize, AUTH_CONTENT_TYPE, AUTH_CONTENT_ENCODING)
    if "hmac" in modes:
        signer = HmacSerializer(
            str(conf.security_hmac_key_id or "default"), _hmac_keys(conf), digest, serializer, inner_accept
        )
        registry.register("hmac", signer.serialize, signer.deserialize, HMAC_CONTENT_TYPE, "utf-8")
    for name in modes:
        registry.enable(name)
    _check_results(app)
    registry._set_default_serializer(conf.task_serializer)


def disable_untrusted_serializers(whitelist: Iterable[str] | None = None) -> None:
    """Celery's helper: refuse every deserializer but ``whitelist`` where no accept list is given."""
    _save_registry()
    disable_insecure_serializers(list(whitelist) if whitelist is not None else None)


def reset_security() -> None:
    """Undo ``setup_security`` in this process (tests; an app that switches setups)."""
    for name in SIGNING_SERIALIZERS:
        if name in registry.name_to_type:
            registry.unregister(name)
    if _saved:
        registry._disabled_content_types = set(_saved["disabled"])
        registry._default_content_type = _saved["default"][0]
        registry._default_content_encoding = _saved["default"][1]
        registry._default_encode = _saved["default"][2]


def _save_registry() -> None:
    if not _saved:
        _saved["disabled"] = set(registry._disabled_content_types)
        _saved["default"] = (
            registry._default_content_type,
            registry._default_content_encoding,
            registry._default_encode,
        )


def _signing_modes(conf: Settings) -> set[str]:
    """Which signing serializers the config uses; refuses a config that would accept unsigned work."""
    accept = list(conf.accept_content or [])
    names = {_NAME_OF.get(item, item) for item in accept}
    if conf.task_serializer not in SIGNING_SERIALIZERS or not names or not names <= set(SIGNING_SERIALIZERS):
        raise ImproperlyConfigured(SETTING_MISSING.format(serializer=conf.task_serializer, accept=accept))
    return names | {conf.task_serializer}


def _auth_serializer(
    conf: Settings,
    key: str | None,
    key_password: str | bytes | None,
    cert: str | None,
    store: str | None,
    digest: str,
    serializer: str,
    inner_accept: set[str],
) -> AuthSerializer:
    from taskq.security import certs

    certs.require_cryptography()
    key = key or conf.security_key
    key_password = key_password or conf.security_key_password
    cert = cert or conf.security_certificate
    store = store or conf.security_cert_store
    given = {"security_key": key, "security_certificate": cert, "security_cert_store": store}
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ImproperlyConfigured(f"the auth serializer needs {', '.join(missing)} (see docs/security.md)")
    assert key and cert and store
    algorithm = certs.digest_algorithm(digest)
    signer = certs.Signer(
        certs.load_private_key(key, key_password), certs.load_certificate(cert), algorithm, key
    )
    return AuthSerializer(signer, certs.CertStore(store), algorithm, serializer, inner_accept)


def _hmac_keys(conf: Settings) -> dict[str, Any]:
    """Every accepted key by id: ``security_hmac_keys`` plus the signing key under its id."""
    kid = str(conf.security_hmac_key_id or "default")
    keys = dict(conf.security_hmac_keys or {})
    secret = conf.security_hmac_key
    if secret:
        if kid in keys and keys[kid] != secret:
            raise ImproperlyConfigured(
                f"security_hmac_keys gives key id {kid!r} another secret than security_hmac_key"
            )
        keys[kid] = secret
    if kid not in keys:
        raise ImproperlyConfigured(
            "the hmac serializer needs security_hmac_key (the shared secret) to sign with"
        )
    return keys


def _check_results(app: App) -> None:
    """A result serializer the backend refuses would make every ``get()`` fail: say so now."""
    conf = app.conf
    if app.result_backend_url is None:
        return
    accepted = prepare_accept_content(conf.result_accept_content or conf.accept_content)
    content_type = registry.name_to_type.get(conf.result_serializer, conf.result_serializer)
    if content_type not in accepted:
        raise ImproperlyConfigured(
            f"result_serializer {conf.result_serializer!r} is not accepted for results "
            f"(result_accept_content, else accept_content: {sorted(accepted)}); set "
            f"result_accept_content=['{conf.result_serializer}'] or sign results too "
            f"(result_serializer='{conf.task_serializer}')"
        )
