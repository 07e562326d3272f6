"""The app and its tasks, through a real worker running in a thread on the memory transport."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fork_support import wait_child

from taskq import Celery, EagerResult, Task, shared_task, signals, states
from taskq.exceptions import DisabledBackend, NotRegistered, TimeoutError
from taskq.worker.worker import Worker

ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0  # upper bound of every wait on a result


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_app(**settings: Any) -> Celery:
    """An app on the in-process transport, with a queue of its own (memory queues are global)."""
    settings.setdefault("task_default_queue", unique("q"))
    return Celery("apptest", broker="memory://", set_as_current=False, **settings)


@contextmanager
def running_worker(app: Celery, **options: Any) -> Iterator[Worker]:
    options.setdefault("pool", "threads")
    options.setdefault("concurrency", 2)
    worker = Worker(app, **options)
    thread = threading.Thread(target=worker.start, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(WAIT)
        assert not thread.is_alive(), "worker thread did not stop"


@contextmanager
def published() -> Iterator[list[dict[str, Any]]]:
    """Capture every ``before_task_publish`` of the block."""
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        seen.append({"sender": sender, **kwargs})

    signals.before_task_publish.connect(receiver, weak=False)
    try:
        yield seen
    finally:
        signals.before_task_publish.disconnect(receiver)


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- naming ---------------------------------------------------------------------------------
def test_task_named_after_module_and_function() -> None:
    app = make_app()

    @app.task
    def multiply(x: int, y: int) -> int:
        return x * y

    assert isinstance(multiply, Task)
    assert multiply.name == f"{__name__}.multiply"
    assert app.tasks[multiply.name] is multiply


def test_explicit_name() -> None:
    app = make_app()

    @app.task(name="proj.custom.name")
    def anything() -> None:
        pass

    assert anything.name == "proj.custom.name"
    assert app.tasks["proj.custom.name"] is anything


def test_tasks_registry_missing_name_is_not_registered() -> None:
    app = make_app()
    with pytest.raises(NotRegistered):
        app.tasks["no.such.task"]


def run_script(tmp_path: Path, source: str) -> str:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_task_in_main_is_named_after_app_main(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        """
        from taskq import Celery
        app = Celery("myproj", broker="memory://")
        nameless = Celery(broker="memory://")

        @app.task
        def hello():
            return "hi"

        @nameless.task
        def hello2():
            return "hi"

        print(hello.name, hello2.name)
        """,
    )
    assert out == "myproj.hello __main__.hello2"


# -- decorator ------------------------------------------------------------------------------
def test_decorator_without_and_with_options() -> None:
    app = make_app()

    @app.task
    def plain(x: int) -> int:
        return x

    @app.task(max_retries=7, default_retry_delay=2, ignore_result=True, serializer="json")
    def configured(x: int) -> int:
        return x

    assert plain.max_retries == 3
    assert configured.max_retries == 7
    assert configured.default_retry_delay == 2
    assert configured.ignore_result is True
    assert plain(4) == 4 and configured(5) == 5


def test_decorating_twice_returns_the_same_task() -> None:
    app = make_app()

    def fun() -> int:
        return 1

    assert app.task(fun) is app.task(fun)


def test_unknown_decorator_option_is_a_type_error() -> None:
    app = make_app()
    with pytest.raises(TypeError, match="max_retrys"):

        @app.task(max_retrys=3)
        def typo() -> None:
            pass


def test_decorator_given_a_non_callable() -> None:
    app = make_app()
    with pytest.raises(TypeError):
        app.task("not a function")  # type: ignore[call-overload]


def test_custom_base_class() -> None:
    app = make_app()

    class Base(Task):  # type: ignore[type-arg]
        custom_attribute = "from-base"

        def greet(self) -> str:
            return f"hello from {self.name}"

    @app.task(base=Base, custom_attribute="overridden")
    def based() -> int:
        return 1

    @app.task(base=Base)
    def other() -> int:
        return 2

    assert isinstance(based, Base)
    assert based.custom_attribute == "overridden"  # an attribute of the base is a valid option
    assert other.custom_attribute == "from-base"
    assert based.greet() == f"hello from {based.name}"


def test_app_task_cls() -> None:
    class AppBase(Task):  # type: ignore[type-arg]
        marker = "app-wide"

    app = Celery("apptest", broker="memory://", task_cls=AppBase, set_as_current=False)

    @app.task
    def fun() -> None:
        pass

    assert isinstance(fun, AppBase)
    assert fun.marker == "app-wide"


def test_bind_gives_the_request() -> None:
    app = make_app()

    @app.task(bind=True)
    def whoami(self: Task, x: int) -> dict[str, Any]:  # type: ignore[type-arg]
        r = self.request
        return {
            "id": r.id,
            "retries": r.retries,
            "hostname": r.hostname,
            "routing_key": r.delivery_info.get("routing_key"),
            "args": list(r.args),
            "is_eager": r.is_eager,
            "x": x,
            "name": self.name,
        }

    with running_worker(app, hostname="binder@%h") as worker:
        result = whoami.delay(7)
        info = result.get(timeout=WAIT)
    assert info["id"] == result.id
    assert info["retries"] == 0
    assert info["hostname"] == worker.hostname
    assert info["hostname"].startswith("binder@")
    assert info["routing_key"] == app.conf.task_default_queue
    assert info["args"] == [7]
    assert info["is_eager"] is False
    assert info["x"] == 7 and info["name"] == whoami.name


def test_bind_called_directly_and_applied() -> None:
    app = make_app()

    @app.task(bind=True)
    def me(self: Task) -> Any:  # type: ignore[type-arg]
        return self.request.id, self.request.is_eager

    assert me() == (None, False)
    applied = me.apply(task_id="fixed-id")
    assert applied.get() == ("fixed-id", True)


# -- results --------------------------------------------------------------------------------
def test_delay_and_get_round_trip() -> None:
    app = make_app()

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with running_worker(app):
        results = [add.delay(i, i) for i in range(10)]
        assert [r.get(timeout=WAIT) for r in results] == [2 * i for i in range(10)]
        assert all(r.state == states.SUCCESS for r in results)


def test_ignore_result_stores_nothing() -> None:
    app = make_app()
    ran = threading.Event()

    @app.task(ignore_result=True)
    def fire_and_forget() -> str:
        ran.set()
        return "value"

    @app.task
    def kept() -> str:
        return "kept"

    with running_worker(app):
        ignored = fire_and_forget.delay()
        per_call = kept.apply_async(ignore_result=True)
        assert ran.wait(WAIT)
        assert kept.delay().get(timeout=WAIT) == "kept"  # the worker is past both
    assert app.backend.get_task_meta(ignored.id)["status"] == states.PENDING
    assert app.backend.get_task_meta(per_call.id)["status"] == states.PENDING


def test_async_result_api_on_success() -> None:
    app = make_app()

    @app.task
    def echo(value: Any) -> Any:
        return value

    with running_worker(app):
        result = echo.delay({"a": [1, 2]})
        assert result.get(timeout=WAIT) == {"a": [1, 2]}
    assert result.state == states.SUCCESS == result.status
    assert result.ready() and result.successful() and not result.failed()
    assert result.result == {"a": [1, 2]}
    assert result.traceback is None
    assert result.date_done is not None and result.date_done.tzinfo is not None
    same = app.AsyncResult(result.id)
    assert same.get(timeout=1) == {"a": [1, 2]}
    same.forget()
    fresh = app.AsyncResult(result.id)
    assert fresh.state == states.PENDING
    assert not fresh.ready()


def test_async_result_api_on_failure() -> None:
    app = make_app()

    @app.task
    def boom(message: str) -> None:
        raise ValueError(message)

    with running_worker(app):
        result = boom.delay("went wrong")
        with pytest.raises(ValueError, match="went wrong"):
            result.get(timeout=WAIT)
    assert result.state == states.FAILURE
    assert result.failed() and result.ready() and not result.successful()
    assert isinstance(result.result, ValueError)
    assert result.result.args == ("went wrong",)
    assert "ValueError: went wrong" in (result.traceback or "")
    again = app.AsyncResult(result.id)
    exc = again.get(timeout=1, propagate=False)
    assert isinstance(exc, ValueError)


def test_pending_result_get_times_out() -> None:
    app = make_app()
    result = app.AsyncResult(str(uuid.uuid4()))
    assert result.state == states.PENDING
    assert not result.ready()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        result.get(timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 5


def test_get_inside_a_task_is_refused() -> None:
    app = make_app()

    @app.task
    def nested() -> str:
        try:
            app.AsyncResult(str(uuid.uuid4())).get(timeout=0.1)
        except RuntimeError as exc:
            return f"refused: {exc}"
        return "allowed"

    with running_worker(app):
        out = nested.delay().get(timeout=WAIT)
    assert out.startswith("refused: Never call result.get() within a task")
    assert nested.apply().get().startswith("refused")


def test_results_disabled_without_backend_on_redis_broker() -> None:
    app = Celery("nobackend", broker="redis://127.0.0.1:6399/0", set_as_current=False)
    result = app.AsyncResult(str(uuid.uuid4()))
    with pytest.raises(DisabledBackend, match="result_backend"):
        result.get(timeout=1)
    with pytest.raises(DisabledBackend):
        _ = result.state
    assert app.result_backend_url is None


# -- local execution ------------------------------------------------------------------------
def test_call_runs_locally_without_a_broker() -> None:
    app = Celery("local", broker="redis://127.0.0.1:1/0", set_as_current=False)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with published() as sent:
        assert add(2, 3) == 5
    assert sent == []
    assert app._broker is None  # nothing was connected


def test_apply_runs_eagerly() -> None:
    app = make_app()

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise KeyError("nope")

    result = add.apply((2, 3))
    assert isinstance(result, EagerResult)
    assert result.get() == 5 and result.state == states.SUCCESS and result.successful()
    failed = fail.apply()
    assert failed.state == states.FAILURE and failed.failed()
    assert isinstance(failed.get(propagate=False), KeyError)
    assert "KeyError" in (failed.traceback or "")
    with pytest.raises(KeyError):
        failed.get()


def test_always_eager() -> None:
    app = make_app(task_always_eager=True)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fail() -> None:
        raise ZeroDivisionError("eager")

    with published() as sent:
        result = add.delay(1, 2)
        failed = fail.apply_async()
    assert sent == []  # nothing went to a broker
    assert isinstance(result, EagerResult) and result.get() == 3
    assert failed.state == states.FAILURE
    with pytest.raises(ZeroDivisionError):
        failed.get()


def test_always_eager_propagates() -> None:
    app = make_app(task_always_eager=True, task_eager_propagates=True)

    @app.task
    def fail() -> None:
        raise ZeroDivisionError("propagated")

    with pytest.raises(ZeroDivisionError, match="propagated"):
        fail.delay()


def test_old_style_always_eager() -> None:
    app = make_app(CELERY_ALWAYS_EAGER=True)

    @app.task
    def one() -> int:
        return 1

    assert isinstance(one.delay(), EagerResult)


# -- sending --------------------------------------------------------------------------------
def test_arguments_are_checked_at_send_time() -> None:
    app = make_app()

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with published() as sent:
        with pytest.raises(TypeError, match="missing a required argument: 'y'"):
            add.delay(1)  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            add.apply_async((1, 2, 3))
        with pytest.raises(TypeError):
            add.apply_async((1,), {"z": 2})
    assert sent == []


def test_typing_off_sends_anyway() -> None:
    app = make_app()

    @app.task(typing=False)
    def add(x: int, y: int) -> int:
        return x + y

    with published() as sent:
        add.delay(1)  # type: ignore[call-arg]
    assert len(sent) == 1


def test_send_task_by_name() -> None:
    app = make_app()

    @app.task(name="remote.add")
    def add(x: int, y: int) -> int:
        return x + y

    client = Celery("client", broker="memory://", set_as_current=False)
    client.conf.task_default_queue = app.conf.task_default_queue
    with running_worker(app):
        result = client.send_task("remote.add", args=[20], kwargs={"y": 22})
        assert result.get(timeout=WAIT) == 42
    assert "remote.add" not in client.tasks


def test_unknown_task_name_is_stored_as_not_registered() -> None:
    app = make_app()

    @app.task
    def known() -> str:
        return "ok"

    with running_worker(app):
        unknown = app.send_task("nobody.registered.this")
        with pytest.raises(NotRegistered):
            unknown.get(timeout=WAIT)
        assert known.delay().get(timeout=WAIT) == "ok"
    meta = app.backend.get_task_meta(unknown.id)
    assert meta["status"] == states.FAILURE
    assert meta["result"] == {
        "exc_type": "NotRegistered",
        "exc_message": ["nobody.registered.this"],
        "exc_module": "celery.exceptions",
    }


def test_times_become_aware_iso_strings_in_headers() -> None:
    app = make_app()

    @app.task
    def later() -> None:
        pass

    naive = datetime.now() + timedelta(hours=1)  # naive on purpose
    with published() as sent:
        before = datetime.now(timezone.utc)
        later.apply_async(countdown=30, expires=120)
        later.apply_async(eta=naive, expires=naive + timedelta(hours=1))
        later.apply_async(eta=datetime.now(timezone.utc) + timedelta(seconds=5))
    assert len(sent) == 3
    for item in sent:
        headers = item["headers"]
        for key in ("eta", "expires"):
            if headers[key] is None:
                continue
            assert isinstance(headers[key], str)
            parsed = datetime.fromisoformat(headers[key])
            assert parsed.tzinfo is not None, f"{key} {headers[key]!r} is naive"
    first = sent[0]["headers"]
    eta = datetime.fromisoformat(first["eta"])
    expires = datetime.fromisoformat(first["expires"])
    assert timedelta(seconds=29) < eta - before < timedelta(seconds=35)
    assert timedelta(seconds=119) < expires - before < timedelta(seconds=125)
    assert sent[2]["headers"]["expires"] is None


def test_eta_with_a_configured_timezone() -> None:
    app = make_app(timezone="Asia/Tokyo")

    @app.task
    def later() -> None:
        pass

    with published() as sent:
        later.apply_async(countdown=10)
    eta = datetime.fromisoformat(sent[0]["headers"]["eta"])
    assert eta.utcoffset() == timedelta(hours=9)


def test_expired_message_is_revoked_not_run() -> None:
    app = make_app()
    ran = threading.Event()

    @app.task
    def too_late() -> None:
        ran.set()

    @app.task
    def marker() -> str:
        return "done"

    revoked: list[Any] = []

    def on_revoked(sender: Any = None, **kwargs: Any) -> None:
        revoked.append(kwargs)

    signals.task_revoked.connect(on_revoked, weak=False)
    try:
        result = too_late.apply_async(expires=datetime.now(timezone.utc) - timedelta(seconds=5))
        with running_worker(app):
            with pytest.raises(Exception) as excinfo:
                result.get(timeout=WAIT)
            assert marker.delay().get(timeout=WAIT) == "done"
    finally:
        signals.task_revoked.disconnect(on_revoked)
    assert not ran.is_set()
    assert type(excinfo.value).__name__ == "TaskRevokedError"
    meta = app.backend.get_task_meta(result.id)
    assert meta["status"] == states.REVOKED
    assert meta["result"] == {
        "exc_type": "TaskRevokedError",
        "exc_message": ["expired"],
        "exc_module": "celery.exceptions",
    }
    assert [r["expired"] for r in revoked] == [True]


def test_eta_task_runs_no_earlier_than_its_eta() -> None:
    app = make_app()

    @app.task
    def stamp() -> float:
        return time.time()

    with running_worker(app):
        sent_at = time.time()
        delayed = stamp.apply_async(countdown=1.0)
        at_eta = datetime.now(timezone.utc) + timedelta(seconds=0.5)
        by_eta = stamp.apply_async(eta=at_eta)
        immediate = stamp.delay()
        assert immediate.get(timeout=WAIT) < sent_at + 0.9  # ETA tasks do not block the queue
        ran_at = delayed.get(timeout=WAIT)
        ran_by_eta = by_eta.get(timeout=WAIT)
    assert ran_at >= sent_at + 1.0 - 0.01
    assert ran_by_eta >= at_eta.timestamp() - 0.01


# -- routing --------------------------------------------------------------------------------
def _routing_keys(app: Celery, calls: Callable[[], None]) -> list[str]:
    with published() as sent:
        calls()
    return [item["routing_key"] for item in sent]


def test_task_routes_dict_exact_glob_and_regex() -> None:
    app = make_app(
        task_routes={
            "proj.exact": {"queue": "q-exact"},
            "proj.glob.*": "q-glob",
            re.compile(r"^proj\.re_\d+$"): {"queue": "q-regex"},
        }
    )
    exact = app.task(name="proj.exact")(lambda: None)
    globbed = app.task(name="proj.glob.one")(lambda: None)
    regexed = app.task(name="proj.re_42")(lambda: None)
    unrouted = app.task(name="proj.other")(lambda: None)
    keys = _routing_keys(
        app,
        lambda: [t.delay() for t in (exact, globbed, regexed, unrouted)],  # type: ignore[func-returns-value]
    )
    assert keys == ["q-exact", "q-glob", "q-regex", app.conf.task_default_queue]


def test_task_routes_router_function_and_list() -> None:
    def by_argument(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
        if name == "proj.dyn" and args and args[0] == "urgent":
            return {"queue": "q-urgent"}
        return None

    app = make_app(task_routes=[by_argument, {"proj.*": {"queue": "q-fallback"}}])
    dyn = app.task(name="proj.dyn")(lambda kind: None)
    keys = _routing_keys(app, lambda: [dyn.delay("urgent"), dyn.delay("normal")])  # type: ignore[func-returns-value]
    assert keys == ["q-urgent", "q-fallback"]


def test_queue_option_beats_routes_and_task_attribute() -> None:
    app = make_app(task_routes={"proj.attr": {"queue": "q-route"}})
    routed = app.task(name="proj.attr")(lambda: None)
    with_attr = app.task(name="proj.with_attr", queue="q-attribute")(lambda: None)
    keys = _routing_keys(
        app,
        lambda: [routed.apply_async(queue="q-call"), routed.delay(), with_attr.delay()],  # type: ignore[func-returns-value]
    )
    assert keys == ["q-call", "q-route", "q-attribute"]


def test_worker_consumes_only_its_queues() -> None:
    app = make_app()
    q1, q2 = unique("q1"), unique("q2")
    ran: list[str] = []

    @app.task
    def mark(tag: str) -> str:
        ran.append(tag)
        return tag

    first = mark.apply_async(("q1",), queue=q1)
    second = mark.apply_async(("q2",), queue=q2)
    with running_worker(app, queues=[q2]) as worker:
        assert [q.name for q in worker.consumer.queues] == [q2]
        assert second.get(timeout=WAIT) == "q2"
        time.sleep(0.3)
    assert ran == ["q2"]
    assert first.state == states.PENDING
    with running_worker(app, queues=[q1]):
        assert first.get(timeout=WAIT) == "q1"


def test_priority_reaches_the_worker() -> None:
    app = make_app()

    @app.task(bind=True)
    def prio(self: Task) -> Any:  # type: ignore[type-arg]
        return self.request.properties.get("priority")

    @app.task(bind=True, priority=3)
    def prio_attr(self: Task) -> Any:  # type: ignore[type-arg]
        return self.request.properties.get("priority")

    with running_worker(app):
        assert prio.apply_async(priority=5).get(timeout=WAIT) == 5
        assert prio_attr.delay().get(timeout=WAIT) == 3


def test_priority_in_delivery_info() -> None:
    """Celery's ``request.delivery_info`` has ``priority`` and ``redelivered`` (taken from the
    message properties); code written for Celery reads the priority there."""
    app = make_app()

    @app.task(bind=True)
    def info(self: Task) -> Any:  # type: ignore[type-arg]
        return self.request.delivery_info

    with running_worker(app):
        delivery_info = info.apply_async(priority=6).get(timeout=WAIT)
    assert delivery_info["routing_key"] == app.conf.task_default_queue
    assert delivery_info["priority"] == 6
    assert delivery_info["redelivered"] in (False, None)


# -- shared tasks, autodiscovery, imports ---------------------------------------------------
def test_shared_task_on_apps_created_before_and_after() -> None:
    before = make_app()

    @shared_task
    def shared_add(x: int, y: int) -> int:
        return x + y

    @shared_task(name=unique("shared.named"))
    def shared_named() -> str:
        return "named"

    after = make_app()
    name = f"{__name__}.shared_add"
    assert name in before.tasks and name in after.tasks
    assert shared_named.name in before.tasks and shared_named.name in after.tasks
    assert before.tasks[name] is not after.tasks[name]
    assert before.tasks[name].app is before and after.tasks[name].app is after
    with running_worker(after):
        assert after.tasks[name].delay(1, 2).get(timeout=WAIT) == 3


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PackageWriter]:
    monkeypatch.syspath_prepend(str(tmp_path))
    writer = PackageWriter(tmp_path)
    yield writer
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in writer.names):
            del sys.modules[name]


class PackageWriter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: list[str] = []

    def package(self, files: dict[str, str]) -> str:
        name = f"pkg_{uuid.uuid4().hex[:10]}"
        directory = self.root / name
        directory.mkdir()
        (directory / "__init__.py").write_text("")
        for filename, source in files.items():
            (directory / filename).write_text(textwrap.dedent(source))
        self.names.append(name)
        return name

    def module(self, source: str) -> str:
        name = f"mod_{uuid.uuid4().hex[:10]}"
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        self.names.append(name)
        return name


TASKS_MODULE = """
from taskq import shared_task

@shared_task
def discovered(x):
    return x * 10
"""


def test_autodiscover_tasks_force(packages: PackageWriter) -> None:
    pkg = packages.package({"tasks.py": TASKS_MODULE})
    app = make_app()
    app.autodiscover_tasks([pkg], force=True)
    assert f"{pkg}.tasks.discovered" in app.tasks


def test_autodiscover_tasks_at_worker_start(packages: PackageWriter) -> None:
    pkg = packages.package({"tasks.py": TASKS_MODULE})
    without_tasks = packages.package({})
    app = make_app()
    app.autodiscover_tasks(lambda: [pkg, without_tasks])
    name = f"{pkg}.tasks.discovered"
    assert name not in app.tasks
    assert f"{pkg}.tasks" not in sys.modules
    with running_worker(app):
        assert name in app.tasks
        assert app.send_task(name, args=[4]).get(timeout=WAIT) == 40


def test_autodiscover_tasks_related_name(packages: PackageWriter) -> None:
    pkg = packages.package({"jobs.py": TASKS_MODULE})
    app = make_app()
    app.autodiscover_tasks([pkg], related_name="jobs", force=True)
    assert f"{pkg}.jobs.discovered" in app.tasks


def test_autodiscover_surfaces_import_errors_inside_tasks_module(packages: PackageWriter) -> None:
    pkg = packages.package({"tasks.py": "import no_such_dependency_qq\n"})
    app = make_app()
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_qq"):
        app.autodiscover_tasks([pkg], force=True)


def test_imports_and_include_are_loaded_by_the_worker(packages: PackageWriter) -> None:
    imported = packages.module(
        """
        from taskq import shared_task

        @shared_task
        def from_imports():
            return "imports"
        """
    )
    included = packages.module(
        """
        from taskq import shared_task

        @shared_task
        def from_include():
            return "include"
        """
    )
    app = make_app(include=[included])
    app.conf.imports = [imported]
    assert f"{imported}.from_imports" not in app.tasks
    with running_worker(app):
        assert app.send_task(f"{imported}.from_imports").get(timeout=WAIT) == "imports"
        assert app.send_task(f"{included}.from_include").get(timeout=WAIT) == "include"


def test_worker_include_option(packages: PackageWriter) -> None:
    module = packages.module(
        """
        from taskq import shared_task

        @shared_task
        def via_option():
            return "option"
        """
    )
    app = make_app()
    with running_worker(app, include=[module]):
        assert app.send_task(f"{module}.via_option").get(timeout=WAIT) == "option"


def test_wrapped_is_the_decorated_function() -> None:
    """``task.__wrapped__`` is the plain function (functools convention), so
    ``inspect.signature(task)`` shows the function's parameters; today it is a bound method
    and the first parameter disappears."""
    import inspect

    app = make_app()

    def add(x: int, y: int) -> int:
        return x + y

    task = app.task(add)
    assert task.__wrapped__ is add
    assert list(inspect.signature(task).parameters) == ["x", "y"]


def test_a_child_forked_while_a_thread_holds_the_app_lock_can_take_it() -> None:
    """billiard forks replacement children from a thread while another may be creating the
    app's result store under its lock: the child must not inherit the lock held."""
    app = Celery("forklock", broker="memory://", backend="memory://", set_as_current=False)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with app._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the lock is free here
        os._exit(0 if app._lock.acquire(timeout=2) else 1)
    release.set()
    thread.join()
    assert wait_child(pid) == 0
    app.close()
