"""Message signing in one process: Celery's auth format both ways, tampering, HMAC keys, setup errors.

Every payload goes through kombu's own ``dumps``/``loads`` with an accept list, as the worker and
the backends decode; Celery 5.7's ``SecureSerializer`` is used only as the other side of the wire.
"""

from __future__ import annotations

import base64
import json
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.serialization import dumps, loads
from security_support import make_cert, signing_undone

from taskq import Celery
from taskq.exceptions import ImproperlyConfigured, SecurityError
from taskq.security import SIGNING_SERIALIZERS
from taskq.security.refusals import security_cause

AUTH = {SIGNING_SERIALIZERS["auth"]}
HMAC = {SIGNING_SERIALIZERS["hmac"]}
SECRET = "0123456789abcdef-the-shared-secret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A trusted signer (key encrypted), its store, and a stranger whose cert nobody trusts."""
    root = tmp_path_factory.mktemp("pki")
    key, cert = make_cert(root / "store", "taskq-signer", password=b"pw")
    key.rename(root / "signer.key")
    stranger_key, stranger_cert = make_cert(root / "stranger", "stranger")
    return {
        "key": root / "signer.key",
        "cert": cert,
        "store": root / "store",
        "stranger_key": stranger_key,
        "stranger_cert": stranger_cert,
    }


@pytest.fixture(autouse=True)
def _undo() -> Iterator[None]:
    with signing_undone():
        yield


def auth_app(pki: dict[str, Path], **conf: Any) -> Celery:
    settings: dict[str, Any] = {
        "security_key": str(pki["key"]),
        "security_key_password": "pw",
        "security_certificate": str(pki["cert"]),
        "security_cert_store": str(pki["store"]),
        "task_serializer": "auth",
        "accept_content": ["auth"],
        "result_accept_content": ["json"],
    }
    settings.update(conf)
    return Celery("signing", broker="memory://", set_as_current=False, **settings)


def hmac_app(**conf: Any) -> Celery:
    settings: dict[str, Any] = {
        "security_hmac_key": SECRET,
        "task_serializer": "hmac",
        "accept_content": ["hmac"],
        "result_accept_content": ["json"],
    }
    settings.update(conf)
    return Celery("signing", broker="memory://", set_as_current=False, **settings)


def refusal(payload: Any, content_type: str, accept: set[str]) -> SecurityError:
    with pytest.raises(DecodeError) as caught:
        loads(payload, content_type, "utf-8", accept=accept)
    cause = security_cause(caught.value)
    assert cause is not None, f"not a security refusal: {caught.value!r}"
    return cause


# -- Celery's auth serializer -----------------------------------------------------------------
def celery_serializer(pki: dict[str, Path], key: str = "key", cert: str = "cert") -> Any:
    from celery.security.certificate import Certificate, FSCertStore
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    password = "pw" if key == "key" else None
    return SecureSerializer(
        PrivateKey(pki[key].read_text(), password),
        Certificate(pki[cert].read_text()),
        FSCertStore(str(pki["store"])),
        "sha256",
        "json",
    )


def test_auth_round_trip_and_celery_reads_it_both_ways(pki: dict[str, Path]) -> None:
    auth_app(pki).setup_security()
    body = [[2, 3], {"k": "v"}, {"callbacks": None}]
    content_type, encoding, payload = dumps(body, serializer="auth")
    assert (content_type, encoding) == ("application/data", "utf-8")
    assert loads(payload, content_type, encoding, accept=AUTH) == body
    celery = celery_serializer(pki)
    assert celery.deserialize(payload) == body  # a Celery 5.7 worker verifies taskq's signature
    assert loads(celery.serialize(body), content_type, encoding, accept=AUTH) == body  # and the reverse


def test_auth_refuses_tampered_foreign_and_unsigned(pki: dict[str, Path]) -> None:
    auth_app(pki).setup_security()
    _, _, payload = dumps([[1], {}, {}], serializer="auth")
    raw = base64.b64decode(payload)
    tampered = base64.b64encode(raw.replace(b"[[1]", b"[[9]")).decode()
    assert "bad signature" in str(refusal(tampered, "application/data", AUTH))

    stranger = celery_serializer(pki, key="stranger_key", cert="stranger_cert")
    assert "unknown certificate" in str(refusal(stranger.serialize([[1], {}, {}]), "application/data", AUTH))
    assert "not base64" in str(refusal("plain text, no signature", "application/data", AUTH))
    with pytest.raises(ContentDisallowed):  # an unsigned JSON task is not even decoded
        loads(json.dumps([[1], {}, {}]), "application/json", "utf-8", accept=AUTH)


class RanWhenUnpickled:
    ran = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (RanWhenUnpickled.mark, ())

    @staticmethod
    def mark() -> None:
        RanWhenUnpickled.ran = True


def test_a_signed_pickle_is_not_unpickled_when_the_inner_serializer_is_json(pki: dict[str, Path]) -> None:
    """A valid signature says who sent the bytes; the receiver still picks which decoders run."""
    auth_app(pki).setup_security()
    from celery.security.certificate import Certificate, FSCertStore
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    pickler = SecureSerializer(
        PrivateKey(pki["key"].read_text(), "pw"),
        Certificate(pki["cert"].read_text()),
        FSCertStore(str(pki["store"])),
        "sha256",
        "pickle",
    )
    payload = pickler.serialize([[RanWhenUnpickled()], {}, {}])
    assert "application/x-python-serialize" in str(refusal(payload, "application/data", AUTH))
    assert not RanWhenUnpickled.ran


# -- taskq's HMAC serializer ------------------------------------------------------------------
def test_hmac_round_trip_and_tampering(pki: dict[str, Path]) -> None:
    hmac_app().setup_security()
    body = [[2, 3], {}, {"chain": None}]
    content_type, encoding, payload = dumps(body, serializer="hmac")
    assert content_type == "application/x-taskq-hmac"
    assert loads(payload, content_type, encoding, accept=HMAC) == body

    envelope = json.loads(payload)
    forged = dict(envelope, body=base64.b64encode(b"[[9, 9], {}, {}]").decode())
    assert "bad signature" in str(refusal(json.dumps(forged), content_type, HMAC))
    swapped = dict(envelope, content_type="application/x-python-serialize")
    assert "bad signature" in str(refusal(json.dumps(swapped), content_type, HMAC))
    unknown = dict(envelope, kid="nobody")
    assert "unknown key id 'nobody'" in str(refusal(json.dumps(unknown), content_type, HMAC))
    assert "not JSON" in str(refusal("[[1], {}, {}", content_type, HMAC))


def test_hmac_key_rotation() -> None:
    """Old key signs, receivers hold old and new; then new signs; then the old key is dropped."""
    old, new = "old-secret-0123456789", "new-secret-0123456789"
    hmac_app(security_hmac_key=old, security_hmac_key_id="2023").setup_security()
    _, _, by_old = dumps([["old"], {}, {}], serializer="hmac")
    receiving = {
        "security_hmac_key": new,
        "security_hmac_key_id": "2024",
        "security_hmac_keys": {"2023": old},
    }
    hmac_app(**receiving).setup_security()
    _, _, by_new = dumps([["new"], {}, {}], serializer="hmac")
    assert loads(by_old, "application/x-taskq-hmac", "utf-8", accept=HMAC) == [["old"], {}, {}]
    assert json.loads(by_new)["kid"] == "2024"
    hmac_app(security_hmac_key=new, security_hmac_key_id="2024").setup_security()
    assert loads(by_new, "application/x-taskq-hmac", "utf-8", accept=HMAC) == [["new"], {}, {}]
    assert "unknown key id '2023'" in str(refusal(by_old, "application/x-taskq-hmac", HMAC))


def test_hmac_with_another_secret_is_refused() -> None:
    hmac_app(security_hmac_key="someone-else-0123456789").setup_security()
    _, _, payload = dumps([[1], {}, {}], serializer="hmac")
    hmac_app().setup_security()
    assert "bad signature" in str(refusal(payload, "application/x-taskq-hmac", HMAC))


# -- setup errors -----------------------------------------------------------------------------
def improper(app: Celery) -> str:
    with pytest.raises(ImproperlyConfigured) as caught:
        app.setup_security()
    return str(caught.value)


def test_setup_errors_name_the_problem(pki: dict[str, Path], tmp_path: Path) -> None:
    assert "accept_content = ['auth']" in improper(auth_app(pki, accept_content=["auth", "json"]))
    assert "accept_content = ['auth']" in improper(auth_app(pki, task_serializer="json"))
    assert "security_cert_store" in improper(auth_app(pki, security_cert_store=None))
    missing = improper(auth_app(pki, security_key=str(tmp_path / "nope.key")))
    assert "nope.key" in missing and "No such file" in missing
    assert "wrong security_key_password" in improper(auth_app(pki, security_key_password="bad"))
    assert "security_key_password" in improper(auth_app(pki, security_key_password=None))
    foreign = improper(auth_app(pki, security_key=str(pki["stranger_key"]), security_key_password=None))
    assert "does not belong to the certificate" in foreign
    assert "holds no certificate" in improper(auth_app(pki, security_cert_store=str(tmp_path)))
    assert "security_digest 'nosuch'" in improper(auth_app(pki, security_digest="nosuch"))
    expired_key, expired_cert = make_cert(tmp_path / "old", "expired", days=-1)
    assert "expired" in improper(
        auth_app(
            pki,
            security_key=str(expired_key),
            security_key_password=None,
            security_certificate=str(expired_cert),
        )
    )
    results = improper(auth_app(pki, result_accept_content=None, result_backend="memory://"))
    assert "result_serializer 'json' is not accepted for results" in results
    assert "security_hmac_key" in improper(hmac_app(security_hmac_key=None))
    assert "at least 16" in improper(hmac_app(security_hmac_key="short"))


def test_missing_cryptography_says_how_to_install_it(
    pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography", None)  # what an absent package looks like to import
    assert "pip install 'taskq[auth]'" in improper(auth_app(pki))


# -- results and exceptions -------------------------------------------------------------------
def test_stored_exceptions_never_become_arbitrary_objects() -> None:
    from taskq.backend.base import exception_from_dict

    with pytest.raises(SecurityError):
        exception_from_dict({"exc_type": "system", "exc_module": "os", "exc_message": ["true"]})
    with pytest.raises(SecurityError):
        exception_from_dict({"exc_type": "Popen", "exc_module": "subprocess", "exc_message": [["true"]]})
    assert "antigravity" not in sys.modules
    standin = exception_from_dict({"exc_type": "Fly", "exc_module": "antigravity", "exc_message": ["x"]})
    assert "antigravity" not in sys.modules, "a stored module name was imported"
    assert type(standin).__name__ == "Fly" and isinstance(standin, Exception)
    real = exception_from_dict({"exc_type": "ValueError", "exc_module": "builtins", "exc_message": ["bad"]})
    assert type(real) is ValueError and real.args == ("bad",)


def test_a_pickled_result_is_refused_unread() -> None:
    app = Celery("results", broker="memory://", backend="memory://", set_as_current=False)
    backend = app.backend
    payload = pickle.dumps({"status": "SUCCESS", "result": RanWhenUnpickled(), "task_id": "t1"})
    backend._set(backend.key_for("t1"), payload, None)
    from taskq.exceptions import BackendGetMetaError

    with pytest.raises(BackendGetMetaError):
        backend.get_task_meta("t1")
    assert not RanWhenUnpickled.ran
