"""Signals: Celery's names, arguments and ``sender`` (task signals: the task object; publish
signals: the task name); ``connect`` as a decorator, ``sender=``, ``weak``, ``dispatch_uid``; a
receiver that raises is logged and never changes what happens to the task."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

import pytest

from taskq import signals, states
from taskq.exceptions import ExceptionInfo, NotRegistered, Retry
from taskq.task import Context

from .conftest import WORKER_MODES, Env
from .helpers import Boom, wait_until

TASK_SIGNALS = (
    signals.task_prerun,
    signals.task_postrun,
    signals.task_success,
    signals.task_failure,
    signals.task_retry,
)


def test_publish_signals(env: Env, connect: Any) -> None:
    @env.app.task
    def add(x: int, y: int) -> int:
        return x + y

    @env.app.task
    def other() -> None:
        pass

    before: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    connect(signals.before_task_publish, lambda **kw: before.append(kw), sender=add.name)
    connect(signals.after_task_publish, lambda **kw: after.append(kw), sender=add.name)
    with env.worker():
        result = add.delay(1, 2)
        other.delay()  # filtered out by sender=
        assert result.get(timeout=10) == 3
    if env.eager:  # an eager call publishes nothing
        assert before == after == []
        return
    [b] = before
    assert set(b) == {
        "signal", "sender", "body", "exchange", "routing_key", "headers", "properties", "declare",
        "retry_policy",
    }  # fmt: skip
    assert b["sender"] == add.name and b["signal"] is signals.before_task_publish
    args, kwargs, embed = b["body"]
    assert list(args) == [1, 2] and kwargs == {} and set(embed) >= {"callbacks", "errbacks", "chain", "chord"}
    assert b["headers"]["id"] == result.id and b["headers"]["task"] == add.name
    assert b["routing_key"] == env.queue
    assert b["properties"]["correlation_id"] == result.id
    [a] = after
    assert set(a) == {"signal", "sender", "body", "exchange", "routing_key", "headers"}
    assert a["sender"] == add.name and a["headers"]["id"] == result.id
    assert a["routing_key"] == env.queue


def test_task_signals_on_success(env: Env, connect: Any) -> None:
    events: list[tuple[str, Any, dict[str, Any]]] = []

    def record(signal: Any, sender: Any, **kw: Any) -> None:
        events.append((signal.name, sender, kw))

    @env.app.task
    def add(x: int, y: int = 0) -> int:
        return x + y

    for signal in TASK_SIGNALS:
        connect(signal, record, sender=add)
    with env.worker():
        result = add.delay(2, y=3)
        assert result.get(timeout=10) == 5
        wait_until(lambda: "task_postrun" in [e[0] for e in events], what="task_postrun")
    assert [e[0] for e in events] == ["task_prerun", "task_success", "task_postrun"]
    assert all(e[1] is add for e in events)
    prerun, success, postrun = (e[2] for e in events)
    assert prerun["task_id"] == result.id and prerun["task"] is add
    assert list(prerun["args"]) == [2] and prerun["kwargs"] == {"y": 3}
    assert set(success) == {"result", "runtime"}
    assert success["result"] == 5 and success["runtime"] >= 0
    assert postrun["task_id"] == result.id and postrun["task"] is add
    assert postrun["retval"] == 5 and postrun["state"] == states.SUCCESS


def test_task_signals_on_failure_and_retry(env: Env, connect: Any) -> None:
    events: list[tuple[str, Any, dict[str, Any]]] = []

    threads: list[int] = []

    def record(signal: Any, sender: Any, **kw: Any) -> None:
        events.append((signal.name, sender, kw))
        threads.append(threading.get_ident())

    @env.app.task(bind=True, max_retries=1, default_retry_delay=0.01)
    def fail(self: Any, x: int) -> None:
        if self.request.retries == 0:
            raise self.retry(exc=Boom("retry me"))
        raise Boom("final", x)

    for signal in TASK_SIGNALS:
        connect(signal, record, sender=fail)
    with env.worker():
        result = fail.delay(4)
        with pytest.raises(Boom):
            result.get(timeout=10)
        wait_until(lambda: [e[0] for e in events].count("task_postrun") == 2, what="two runs")
    # The retry is published before the first run's task_retry and task_postrun: on a busy
    # machine the second run (another pool thread) can begin in between, as in Celery. Each
    # run's own signals come in order, and the retried run begins first.
    runs = _runs(events, threads)
    assert [[e[0] for e in run] for run in runs] == [
        ["task_prerun", "task_retry", "task_postrun"], ["task_prerun", "task_failure", "task_postrun"],
    ]  # fmt: skip
    events = [*runs[0], *runs[1]]
    retry = events[1][2]
    assert set(retry) == {"request", "reason", "einfo"}
    assert isinstance(retry["request"], Context) and retry["request"].id == result.id
    assert isinstance(retry["reason"], Retry) and type(retry["reason"].exc) is Boom
    assert isinstance(retry["einfo"], ExceptionInfo)
    assert events[2][2]["state"] == states.RETRY
    failure = events[4][2]
    assert set(failure) == {"task_id", "exception", "args", "kwargs", "traceback", "einfo"}
    assert failure["task_id"] == result.id
    assert type(failure["exception"]) is Boom and failure["exception"].args == ("final", 4)
    assert list(failure["args"]) == [4] and failure["kwargs"] == {}
    assert failure["einfo"].exception is failure["exception"]
    assert events[5][2]["state"] == states.FAILURE and events[5][2]["retval"] is failure["exception"]


@pytest.mark.parametrize("mode", WORKER_MODES)
def test_task_unknown(env: Env, connect: Any) -> None:
    unknown: list[dict[str, Any]] = []
    connect(signals.task_unknown, lambda **kw: unknown.append(kw))
    with env.worker():
        result = env.app.send_task("semantics.no_such_task", (1,))
        with pytest.raises(NotRegistered):
            result.get(timeout=10)
        assert result.state == states.FAILURE
    [u] = [u for u in unknown if u["id"] == result.id]
    assert u["name"] == "semantics.no_such_task"
    assert isinstance(u["exc"], NotRegistered)
    assert u["message"].headers["id"] == result.id


def test_connect_as_decorator_and_sender_filter(env: Env) -> None:
    seen: list[tuple[str, Any]] = []

    @env.app.task
    def first() -> str:
        return "first"

    @env.app.task
    def second() -> str:
        return "second"

    @signals.task_success.connect
    def everything(sender: Any = None, result: Any = None, **kw: Any) -> None:
        seen.append(("all", result))

    @signals.task_success.connect(sender=first)
    def only_first(sender: Any = None, result: Any = None, **kw: Any) -> None:
        seen.append(("first", result))

    try:
        with env.worker():
            first.delay().get(timeout=10)
            second.delay().get(timeout=10)
            wait_until(lambda: len(seen) >= 3, what="three receiver calls")
    finally:
        signals.task_success.disconnect(everything)
        signals.task_success.disconnect(only_first, sender=first)
    assert sorted(seen) == [("all", "first"), ("all", "second"), ("first", "first")]


def test_weak_and_strong_receivers(env: Env) -> None:
    seen: list[str] = []

    @env.app.task
    def ping() -> str:
        return "pong"

    def connect_temporaries() -> None:
        def weak_receiver(**kw: Any) -> None:
            seen.append("weak")

        def strong_receiver(**kw: Any) -> None:
            seen.append("strong")

        signals.task_success.connect(weak_receiver, sender=ping)  # weak=True: dies with its function
        signals.task_success.connect(strong_receiver, sender=ping, weak=False, dispatch_uid="sem-strong")

    connect_temporaries()
    gc.collect()
    try:
        with env.worker():
            ping.delay().get(timeout=10)
            wait_until(lambda: seen, what="the strong receiver")
    finally:
        signals.task_success.disconnect(sender=ping, dispatch_uid="sem-strong")
    assert seen == ["strong"]


def test_no_double_connect(env: Env, connect: Any) -> None:
    seen: list[str] = []

    @env.app.task
    def ping() -> str:
        return "pong"

    def once(**kw: Any) -> None:
        seen.append("once")

    def first_uid(**kw: Any) -> None:
        seen.append("first_uid")

    def second_uid(**kw: Any) -> None:
        seen.append("second_uid")

    connect(signals.task_success, once, sender=ping)
    connect(signals.task_success, once, sender=ping)  # the same receiver again: ignored
    connect(signals.task_success, first_uid, sender=ping, dispatch_uid="sem-uid")
    connect(signals.task_success, second_uid, sender=ping, dispatch_uid="sem-uid")  # same uid: ignored
    with env.worker():
        ping.delay().get(timeout=10)
        wait_until(lambda: len(seen) >= 2, what="the receivers")
        ping.delay().get(timeout=10)
        wait_until(lambda: len(seen) >= 4, what="the receivers")
    assert sorted(seen) == ["first_uid", "first_uid", "once", "once"]


def test_a_failing_receiver_is_logged_and_never_breaks_the_task(
    env: Env, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    later: list[Any] = []

    @env.app.task
    def add(x: int, y: int) -> int:
        return x + y

    def broken(**kw: Any) -> None:
        raise RuntimeError("receiver is broken")

    for signal in (signals.task_prerun, signals.task_success, signals.task_postrun):
        connect(signal, broken, sender=add)
    connect(signals.before_task_publish, broken, sender=add.name)
    connect(signals.task_success, lambda result, **kw: later.append(result), sender=add)
    with env.worker():
        result = add.delay(20, 22)
        assert result.get(timeout=10) == 42
        assert result.state == states.SUCCESS
        wait_until(lambda: later, what="the receiver after the broken one")
        wait_until(
            lambda: sum("receiver is broken" in str(r.exc_info) for r in caplog.records) >= 3,
            what="the receiver errors in the log",
        )
    assert later == [42]


def _runs(events: list[Any], threads: list[int]) -> list[list[Any]]:
    """The signals of each run (one pool thread, from its task_prerun on), in order of start."""
    open_runs: dict[int, list[Any]] = {}
    runs: list[list[Any]] = []
    for event, thread in zip(events, threads, strict=True):
        if event[0] == "task_prerun":
            open_runs[thread] = []
            runs.append(open_runs[thread])
        open_runs[thread].append(event)
    return runs
