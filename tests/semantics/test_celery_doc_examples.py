"""Celery's documented task examples (``examples/celery_docs``) run unchanged through a worker.

The modules are imported fresh for each test and their app pointed at this test's broker; only
the documented delays (minutes) are shortened on the task objects, the code is the docs' code.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from taskq import _state, signals, states

from .conftest import WORKER_MODES, Env
from .helpers import wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "celery_docs"
pytestmark = pytest.mark.parametrize("mode", WORKER_MODES)


@pytest.fixture
def load(mode: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``load("retry_twitter")``: (module, Env) with the module's app on this test's broker."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    # The examples create their app as Celery's docs do (set_as_current): keep that to this test.
    monkeypatch.setattr(_state, "_default_app", list(_state._default_app))
    previous_app = _state._current_app.get()
    url = request.getfixturevalue("redis_url") if mode == "redis" else "memory://"
    loaded: list[str] = []

    def _load(name: str) -> tuple[ModuleType, Env]:
        for module in (name, "fake_twitter"):
            sys.modules.pop(module, None)
        module = importlib.import_module(name)
        loaded.append(name)
        _state._current_app.set(previous_app)
        app = module.app
        app.conf.broker_url = url
        app.conf.result_backend = url
        app.conf.task_default_queue = f"docs-{uuid.uuid4().hex[:12]}"
        return module, Env(mode, app)

    yield _load
    for name in (*loaded, "fake_twitter"):
        sys.modules.pop(name, None)


def test_retry_send_twitter_status(load: Callable[[str], tuple[ModuleType, Env]], connect: Any) -> None:
    module, env = load("retry_twitter")
    from fake_twitter import Twitter

    Twitter.reset(failures=2)
    module.send_twitter_status.default_retry_delay = 0.05  # the docs' default: 3 minutes
    retries: list[Any] = []
    connect(
        signals.task_retry, lambda reason, **kw: retries.append(reason), sender=module.send_twitter_status
    )
    connect(signals.task_retry, lambda reason, **kw: retries.append(reason), sender=module.add)
    with env.worker():
        result = module.send_twitter_status.delay("oauth-token", "Hello from taskq")
        assert result.get(timeout=10) is None
        assert result.state == states.SUCCESS
        assert Twitter.sent == ["Hello from taskq"]
        assert [type(r.exc) for r in retries] == [Twitter.FailWhaleError] * 2

        # A refused login is retried too, and fails with LoginError once retries run out.
        module.send_twitter_status.max_retries = 1
        bad = module.send_twitter_status.delay("bad-token", "never sent")
        with pytest.raises(Twitter.LoginError):
            bad.get(timeout=10)

        # add(): countdown=60 overrides default_retry_delay; the first attempt is RETRY.
        retries.clear()
        Twitter.reset(failures=1)
        pending = module.add.delay(2, 3)
        wait_until(lambda: pending.state == states.RETRY, what="the RETRY state")
        assert type(pending.result) is RuntimeError
        assert [r.when for r in retries] == [60]


def test_autoretry_for_with_retry_kwargs_and_backoff(load: Callable[[str], tuple[ModuleType, Env]]) -> None:
    module, env = load("autoretry")
    from fake_twitter import Twitter

    Twitter.reset(failures=2)
    module.refresh_timeline.default_retry_delay = 0.05
    module.refresh_timeline_backoff.retry_backoff_max = 1  # the docs' default: 600 s
    with env.worker():
        timeline = module.refresh_timeline.delay("ask").get(timeout=10)
        assert timeline == ["ask: tweet 0", "ask: tweet 1", "ask: tweet 2"]
        assert Twitter.failures == 0

        Twitter.reset(failures=2)
        started = time.monotonic()
        assert module.refresh_timeline_backoff.delay("ask").get(timeout=10) == timeline
        assert time.monotonic() - started < 5  # two jittered waits of at most 1 s

        Twitter.reset(failures=10)  # more than max_retries=5: the original exception
        with pytest.raises(Twitter.FailWhaleError):
            module.refresh_timeline.delay("ask").get(timeout=10)
        assert Twitter.failures == 10 - 6


def test_custom_state_progress(load: Callable[[str], tuple[ModuleType, Env]]) -> None:
    module, env = load("progress")
    gates = [threading.Event() for _ in range(3)]
    files = ["a.txt", "b.txt", "c.txt"]
    original_upload = module.upload
    module.upload = lambda file: gates[files.index(file)].wait(10)  # let the test watch each step
    with env.worker():
        result = module.upload_files.delay(files)
        for i in range(3):
            wait_until(lambda i=i: result.state == "PROGRESS" and result.info["current"] == i)
            assert result.info == {"current": i, "total": 3}
            gates[i].set()
        assert result.get(timeout=10) == 3
        assert result.state == states.SUCCESS
    module.upload = original_upload
    assert module.upload_files(["x"]) == 1  # called directly: no state to update


def test_on_failure_handler(
    load: Callable[[str], tuple[ModuleType, Env]], capsys: pytest.CaptureFixture[str]
) -> None:
    module, env = load("on_failure")
    out: list[str] = []

    def printed(line: str) -> bool:
        out.append(capsys.readouterr().out)
        return line in "".join(out)

    with env.worker():
        result = module.add.delay(2, 2)
        with pytest.raises(KeyError):
            result.get(timeout=10)
        assert result.state == states.FAILURE
        wait_until(lambda: printed(f"{result.id!r} failed: KeyError()"), what="on_failure's print")
    assert isinstance(module.add, module.MyTask)
