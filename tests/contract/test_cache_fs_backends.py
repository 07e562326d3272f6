"""The result-backend and chord contracts on memcached and on the filesystem, and Celery 5.7 on both.

The contract classes of ``test_result_backends`` and ``test_chord_backends`` run here unchanged
against ``cache+memcached://`` (a memcached this module starts on a free port and stops) and
``file://`` (a temporary directory per test). Without the memcached binary the memcached tests
skip loudly, and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_chord_backends as chords
import test_result_backends as results

from taskq import states
from taskq.app import App
from taskq.backend.cache import CacheBackend, expire_arg, parse_servers
from taskq.backend.filesystem import FilesystemBackend
from taskq.exceptions import BackendError, BackendStoreError, ImproperlyConfigured, OperationalError
from taskq.message import TaskRequest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
KINDS = ["memcached", "filesystem"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def memcached_url() -> Iterator[str]:
    """``cache+memcached://`` of a private memcached on a free port, stopped after the module."""
    binary = shutil.which("memcached")
    if binary is None:
        message = "memcached is not installed (apt-get install memcached)"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: service tests must run, not skip)")
        pytest.skip(f"SKIPPED SERVICE TEST: {message}")
    for _ in range(5):  # another process may take the free port first
        port = _free_port()
        args = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", "-t", "2"]
        if os.geteuid() == 0:
            args += ["-u", "root"]
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while server.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.02)
        if server.poll() is None:
            break
    else:
        pytest.fail(f"memcached did not start: {server.stderr.read() if server.stderr else ''!r}")
    yield f"cache+memcached://127.0.0.1:{port}/"
    server.terminate()
    server.wait(10)


def backend_url(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    if kind == "memcached":
        return str(request.getfixturevalue("memcached_url"))
    return f"file://{tmp_path}"


# -- the contracts ----------------------------------------------------------------------------


class TestResultContract(results.TestContract):
    @pytest.fixture(params=KINDS)
    def env(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[results.Env]:
        environment = results.Env(request.param, "memory://", backend_url(request, request.param, tmp_path))
        yield environment
        environment.app.close()


def live_chord_keys(env: Any, gid: str) -> list[str]:
    return [k for k in env.backend.chord_keys(gid) if not k.endswith(".c")]


@pytest.fixture
def chord_env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(chords, "chord_keys", live_chord_keys)  # the shared helper knows SQL stores

    def make(kind: str, **settings: Any) -> chords.Env:
        return chords.Env(kind, backend_url(request, kind, tmp_path), **settings)

    return make


class ChordEnv:
    @pytest.fixture(params=KINDS)
    def env(self, request: pytest.FixtureRequest, chord_env: Any) -> Iterator[chords.Env]:
        environment = chord_env(request.param)
        yield environment
        environment.close()


class TestGroups(ChordEnv, chords.TestGroups):
    test_redis_bytes_ttl_and_publish_match_celery = None  # type: ignore[assignment]


class TestCounting(ChordEnv, chords.TestCounting):
    @pytest.mark.parametrize("kind", KINDS)
    def test_chord_keys_expire(self, request: pytest.FixtureRequest, kind: str) -> None:  # type: ignore[override]
        env = request.getfixturevalue("chord_env")(kind, result_chord_expires=1)
        gid, _, requests = env.chord(2)
        env.report(requests[0], 1)
        assert len(live_chord_keys(env, gid)) == (4 if kind == "memcached" else 5)
        time.sleep(2.1)  # memcached counts expiry in whole seconds
        assert live_chord_keys(env, gid) == []
        env.close()


# -- Celery 5.7 on the same store -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_celery_and_taskq_read_each_others_results(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    celery = pytest.importorskip("celery")
    url = backend_url(request, kind, tmp_path)
    capp = celery.Celery("interop", broker="memory://", backend=url, set_as_current=False)
    app = App("interop", broker="memory://", backend=url)
    try:
        theirs, ours = str(uuid.uuid4()), str(uuid.uuid4())
        capp.backend.store_result(theirs, {"from": "celery"}, states.SUCCESS)
        capp.backend.store_result(str(uuid.uuid4()), ValueError("x"), states.FAILURE)
        assert app.AsyncResult(theirs).get(timeout=5) == {"from": "celery"}
        key = f"celery-task-meta-{theirs}"
        assert app.backend._get(key) == capp.backend.get(key.encode() if kind == "filesystem" else key)
        app.backend.store_result(ours, [1, "two"], states.SUCCESS)
        app.backend.store_result(str(uuid.uuid4()), KeyError("k"), states.FAILURE)
        assert capp.AsyncResult(ours).get(timeout=5) == [1, "two"]
        failed = str(uuid.uuid4())
        app.backend.store_result(failed, KeyError("k"), states.FAILURE)
        with pytest.raises(KeyError):
            capp.AsyncResult(failed).get(timeout=5)
    finally:
        capp.close()
        app.close()


def test_filesystem_files_are_celerys(tmp_path: Path) -> None:
    app = App("files", broker="memory://", backend=f"file://{tmp_path}")
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, 5, states.SUCCESS)
    raw = (tmp_path / f"celery-task-meta-{task_id}").read_bytes()
    assert raw.startswith(b'{"status": "SUCCESS", "result": 5, ') and raw.endswith(f'"{task_id}"}}'.encode())
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [
        f"celery-task-meta-{task_id}"
    ]
    app.close()


# -- configuration and bad input --------------------------------------------------------------


def test_memcached_urls() -> None:
    assert parse_servers("cache+memcached://h1:11212;h2;[::1]:3;unix:/run/m.sock/") == [
        ("h1", 11212),
        ("h2", 11211),
        ("::1", 3),
        "/run/m.sock",
    ]
    for bad in ("cache+memcached://", "cache+memcached://h:port/", "cache+memcached://:1/"):
        with pytest.raises(ImproperlyConfigured):
            parse_servers(bad)
    assert expire_arg(None) == 0 and expire_arg(0.2) == 1 and expire_arg(86400) == 86400
    assert expire_arg(40 * 86400) > time.time()  # an absolute time, as memcached reads long ones


def test_memcached_refusals_are_clear_errors(memcached_url: str) -> None:
    app = App("bad", broker="memory://", backend=memcached_url)
    with pytest.raises(BackendError, match="whitespace"):
        app.backend.store_result("has a space", 1, states.SUCCESS)
    with pytest.raises(BackendStoreError):
        app.backend.store_result(str(uuid.uuid4()), "x" * (2 * 1024 * 1024), states.SUCCESS)
    app.close()
    down = App("down", broker="memory://", backend=f"cache+memcached://u:s3cret@127.0.0.1:{_free_port()}/")
    with pytest.raises(OperationalError) as info:
        down.AsyncResult(str(uuid.uuid4())).state  # noqa: B018
    assert "s3cret" not in str(info.value)
    down.close()


def test_filesystem_refusals_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ImproperlyConfigured, match="cannot use"):
        App("fs", broker="memory://", backend=f"file://{tmp_path}/missing/x").backend  # noqa: B018
    (tmp_path / "afile").write_text("")
    with pytest.raises(ImproperlyConfigured):
        App("fs", broker="memory://", backend=f"file://{tmp_path}/afile").backend  # noqa: B018
    backend = App("fs", broker="memory://", backend=f"file://{tmp_path}").backend
    assert isinstance(backend, FilesystemBackend)
    for bad in ("../escape", "a/b", "/etc/passwd"):
        with pytest.raises(BackendError):
            backend.store_result(bad, 1, states.SUCCESS)
    assert not (tmp_path.parent / "escape").exists()


def test_filesystem_cleanup_drops_old_results_only(tmp_path: Path) -> None:
    app = App("fs", broker="memory://", backend=f"file://{tmp_path}", result_expires=60)
    old, new = str(uuid.uuid4()), str(uuid.uuid4())
    app.backend.store_result(old, 1, states.SUCCESS)
    app.backend.store_result(new, 2, states.SUCCESS)
    stale = time.time() - 120
    os.utime(tmp_path / f"celery-task-meta-{old}", (stale, stale))
    app.backend.cleanup()
    assert app.AsyncResult(old).state == states.PENDING and app.AsyncResult(new).result == 2
    app.close()


def test_backend_classes_by_scheme(memcached_url: str, tmp_path: Path) -> None:
    for scheme in ("memcached", "memcache", "pymemcache", "pylibmc"):
        url = memcached_url.replace("memcached", scheme, 1)
        assert isinstance(App("s", broker="memory://", backend=url).backend, CacheBackend)
    setting = App(
        "s", broker="memory://", backend="cache", cache_backend=memcached_url.removeprefix("cache+")
    )
    assert setting.backend.servers == parse_servers(memcached_url)
    with pytest.raises(ImproperlyConfigured, match="cache_backend"):
        App("s", broker="memory://", backend="cache", cache_backend="memory://").backend  # noqa: B018
    request = TaskRequest(name="t", id=str(uuid.uuid4()), args=[], kwargs={}, headers={})
    app = App("s", broker="memory://", backend=f"file://localhost{tmp_path}")
    app.backend.store_result(request.id, "ok", states.SUCCESS, request=request)
    assert (tmp_path / f"celery-task-meta-{request.id}").exists()
    app.close()
