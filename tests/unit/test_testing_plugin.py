"""The pytest plugin ``taskq.testing``, exercised the way a user meets it: through ``pytester``.

Each test writes a small test file, runs pytest on it and checks the outcome. The inner tests
assert the behaviour themselves, so a broken fixture makes an inner test fail, and the outer
``assert_outcomes`` turns that into a failure here.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TASKS = """
import threading
import time

import pytest

CALLS = []


@pytest.fixture
def tasks(taskq_app):
    CALLS.clear()

    @taskq_app.task(name="t.add")
    def add(x, y):
        time.sleep(0.1)
        CALLS.append((x, y, threading.get_ident()))
        return x + y

    @taskq_app.task(name="t.fail")
    def fail(message):
        raise ValueError(message)

    @taskq_app.task(name="t.sleep")
    def sleep(seconds):
        time.sleep(seconds)

    return taskq_app.tasks
"""


def run(pytester: pytest.Pytester, test: str, *args: str, conftest: str = "") -> pytest.RunResult:
    """Run ``test`` (with the ``tasks`` fixture and ``conftest`` in its conftest) in a new process.

    A new process each time: the plugin is loaded only through the installed entry point, and
    no state (queues, shared tasks, imported modules) carries over from one run to the next.
    """
    pytester.makeconftest(TASKS + conftest)
    pytester.makepyfile(test_inner=test)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers", *args, timeout=120)


def test_plugin_loads_from_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_inner="""
        def test_app(taskq_app):
            assert taskq_app.conf.broker_url == "memory://"
        """
    )
    # A fresh interpreter: nothing but the installed entry point can provide the fixture.
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    without = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:taskq")
    without.assert_outcomes(errors=1)
    without.stdout.fnmatch_lines(["*fixture 'taskq_app' not found*"])
    markers = pytester.runpytest_subprocess("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.taskq(**settings):*"])


def test_worker_runs_tasks_and_drain_waits_for_them(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import threading
        from conftest import CALLS

        def test_round_trip(taskq_app, taskq_worker, tasks):
            assert taskq_worker.app is taskq_app
            assert taskq_worker.hostname.startswith("taskq-test-")
            assert taskq_worker.thread.is_alive()
            results = [tasks["t.add"].delay(i, 1) for i in range(3)]
            assert taskq_worker.drain() == []
            assert sorted(c[:2] for c in CALLS) == [(0, 1), (1, 1), (2, 1)]
            assert all(c[2] != threading.get_ident() for c in CALLS)  # ran in the worker
            assert [r.get(timeout=1) for r in results] == [1, 2, 3]
            assert taskq_worker.pending() == []
        """,
    )
    result.assert_outcomes(passed=1)


def test_drain_reraises_a_task_error_once(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import pytest
        from taskq.exceptions import Ignore, Reject

        def test_error(taskq_app, taskq_worker, tasks):
            tasks["t.fail"].delay("boom")
            with pytest.raises(ValueError, match="boom") as info:
                taskq_worker.drain()
            assert "raised by task t.fail[" in "".join(info.value.__notes__)
            assert taskq_worker.drain() == []  # reported once

        def test_not_errors(taskq_app, taskq_worker):
            @taskq_app.task
            def ignored():
                raise Ignore()

            @taskq_app.task
            def rejected():
                raise Reject("no", requeue=False)

            @taskq_app.task(bind=True)
            def flaky(self):
                if self.request.retries < 2:
                    raise self.retry(exc=OSError("flaky"), countdown=0.1)
                return self.request.retries

            ignored.delay()
            rejected.delay()
            retried = flaky.delay()
            assert taskq_worker.drain() == []  # waits for the retries too
            assert retried.get(timeout=1) == 2

        def test_returned_without_raise(taskq_worker, tasks):
            tasks["t.fail"].delay("a")
            tasks["t.fail"].delay("b")
            errors = taskq_worker.drain(raise_errors=False)
            assert sorted(str(e) for e in errors) == ["a", "b"]

        def test_unregistered_task(taskq_app, taskq_worker):
            taskq_app.send_task("t.nobody")
            with pytest.raises(KeyError, match="t.nobody"):
                taskq_worker.drain()

        def test_eager_failure_not_reported_by_drain(taskq_worker, tasks):
            assert tasks["t.fail"].apply(("eager",)).failed()  # runs here, not on the worker
            assert taskq_worker.drain() == []
        """,
    )
    result.assert_outcomes(passed=5)


def test_drain_waits_for_a_countdown(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import time
        from conftest import CALLS

        def test_countdown(taskq_worker, tasks):
            started = time.monotonic()
            tasks["t.add"].apply_async((1, 2), countdown=0.5)
            taskq_worker.drain()
            assert [c[:2] for c in CALLS] == [(1, 2)]
            assert time.monotonic() - started >= 0.5
        """,
    )
    result.assert_outcomes(passed=1)


def test_drain_timeout_names_what_is_pending(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import time
        import pytest
        import taskq.exceptions

        def test_slow_task(taskq_worker, tasks):
            tasks["t.sleep"].delay(1.0)
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=r"timed out after 0.2 s; still pending: 1 running: "
                               r"<Request t.sleep\\["):
                taskq_worker.drain(timeout=0.2)
            assert time.monotonic() - started < 0.8
            with pytest.raises(taskq.exceptions.TimeoutError):
                taskq_worker.drain(timeout=0.1)
            taskq_worker.drain(timeout=5)

        def test_eta_after_the_deadline_fails_at_once(taskq_worker, tasks):
            tasks["t.add"].apply_async((1, 2), countdown=30)
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=r"cannot finish: <Request t.add\\[.*\\]> is due in (29|30)\\.\\d s"):
                taskq_worker.drain(timeout=5)
            assert time.monotonic() - started < 2
        """,
    )
    result.assert_outcomes(passed=2)


def test_config_from_fixture_and_marker(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import pytest
        from taskq.result import EagerResult

        def test_fixture(taskq_app, taskq_config):
            assert taskq_config["result_expires"] == 123
            assert taskq_app.conf.result_expires == 123
            assert taskq_app.conf.broker_url == "memory://"
            assert taskq_app.main == "proj"

        @pytest.mark.taskq(result_expires=7, task_always_eager=True)
        def test_marker(taskq_app, tasks):
            assert taskq_app.conf.result_expires == 7  # over the conftest's taskq_config
            assert isinstance(tasks["t.add"].delay(1, 1), EagerResult)

        @pytest.mark.taskq(result_expires=1)
        class TestClass:
            @pytest.mark.taskq(result_extended=True)
            def test_closest_wins(self, taskq_app):
                assert (taskq_app.conf.result_expires, taskq_app.conf.result_extended) == (1, True)
        """,
        conftest="""

@pytest.fixture
def taskq_config():
    return {"broker_url": "memory://", "result_backend": "memory://", "result_expires": 123}


@pytest.fixture
def taskq_parameters():
    return {"main": "proj"}
""",
    )
    result.assert_outcomes(passed=3)


def test_includes_are_imported_into_each_app(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        inc_tasks="""
        from taskq import shared_task

        @shared_task
        def mul(x, y):
            return x * y
        """,
        conftest="""
        import pytest

        @pytest.fixture
        def taskq_includes():
            return ["inc_tasks"]
        """,
        test_inner="""
        import sys

        def test_first(taskq_app, taskq_worker):
            assert "inc_tasks" in sys.modules
            assert taskq_app.tasks["inc_tasks.mul"].delay(6, 7).get(timeout=5) == 42

        def test_second(taskq_app, taskq_worker):
            assert taskq_app.tasks["inc_tasks.mul"].delay(2, 3).get(timeout=5) == 6
        """,
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120).assert_outcomes(passed=2)


def test_tests_do_not_see_each_others_messages_or_results(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        from taskq import current_app
        from conftest import CALLS

        SEEN = {}

        def test_one(taskq_app, tasks):
            assert current_app() is taskq_app
            SEEN["queue"] = taskq_app.conf.task_default_queue
            assert SEEN["queue"].startswith("taskq-test-")
            SEEN["id"] = tasks["t.add"].delay(1, 1).id  # no worker: it stays in the queue
            taskq_app.backend.store_result("fixed-id", 1, "SUCCESS")

        def test_two(taskq_app, taskq_worker, tasks):
            assert current_app() is taskq_app
            assert taskq_app.conf.task_default_queue.startswith("taskq-test-")
            assert taskq_app.conf.task_default_queue != SEEN["queue"]
            tasks["t.add"].delay(2, 2)
            taskq_worker.drain()
            assert [c[:2] for c in CALLS] == [(2, 2)]
            assert taskq_app.AsyncResult("fixed-id").state == "PENDING"
            assert taskq_app.AsyncResult(SEEN["id"]).state == "PENDING"
            SEEN["worker"], SEEN["app"] = taskq_worker, taskq_app

        def test_three():
            assert not SEEN["worker"].thread.is_alive()  # stopped after its test
            assert current_app() is not SEEN["app"]  # the current app before the test is back
        """,
    )
    result.assert_outcomes(passed=3)


def test_eager_runs_tasks_in_the_test_thread(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import threading
        import pytest
        from taskq.testing import eager
        from conftest import CALLS

        def test_fixture(taskq_eager, tasks):
            assert tasks["t.add"].delay(2, 3).get() == 5
            assert CALLS[0][2] == threading.get_ident()
            with pytest.raises(ValueError, match="now"):
                tasks["t.fail"].delay("now")

        def test_context_manager(taskq_app, tasks):
            with eager(taskq_app):
                assert tasks["t.add"].delay(1, 1).get() == 2
            assert not taskq_app.conf.task_always_eager
            assert "task_eager_propagates" not in taskq_app.conf.changes()
        """,
    )
    result.assert_outcomes(passed=2)


def test_worker_pool_and_parameters(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        def test_solo(taskq_worker, tasks):
            assert taskq_worker.worker.pool_name == "solo"
            assert taskq_worker.worker.concurrency == 1
            assert taskq_worker.hostname.startswith("tester@")
            tasks["t.add"].delay(1, 1)
            taskq_worker.drain()
        """,
        conftest="""

@pytest.fixture
def taskq_worker_pool():
    return "solo"


@pytest.fixture
def taskq_worker_parameters():
    return {"hostname": "tester@%h", "shutdown_timeout": 5}
""",
    )
    result.assert_outcomes(passed=1)


def test_a_worker_that_cannot_start_errors_the_test(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import pytest

        @pytest.mark.taskq(broker_url="redis://127.0.0.1:1/0", broker_connection_retry_on_startup=False)
        def test_unreachable(taskq_worker):
            pass
        """,
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: taskq test worker * crashed: OperationalError*"])
