"""Handles on task results: ``AsyncResult`` reads the backend, ``EagerResult`` holds a value.

A result object is cheap and stateless apart from a cache of the last ready meta, so it can be
rebuilt anywhere from an id (``app.AsyncResult(id)``) and read by any process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from taskq import _state, states
from taskq.exceptions import TimeoutError as ResultTimeout
from taskq.message import parse_time

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.backend.base import ResultBackend

R = TypeVar("R")


def _refuse_inside_task() -> None:
    if _state.current_request() is not None:
        raise RuntimeError(
            "Never call result.get() within a task: it can deadlock the worker. "
            "Pass disable_sync_subtasks=False if you really mean it."
        )


class AsyncResult(Generic[R]):
    """The state and return value of a task that was sent, as the result backend knows it."""

    def __init__(
        self,
        id: str,  # noqa: A002 - Celery's keyword
        backend: ResultBackend | None = None,
        task_name: str | None = None,
        app: App | None = None,
        parent: AsyncResult[Any] | None = None,
    ) -> None:
        self.id = id
        self.app = app or _state.current_app()
        self._backend = backend
        self.task_name = task_name
        self.parent = parent
        self._cache: dict[str, Any] | None = None
        self._callbacks: list[tuple[Callable[[Any], Any], Callable[[BaseException], Any] | None]] = []

    @property
    def task_id(self) -> str:
        return self.id

    @property
    def backend(self) -> ResultBackend:
        return self._backend or self.app.backend

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return self.id == other.id
        return other == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def as_tuple(self) -> list[Any]:
        """Celery's result tuple: ``[[id, parent_tuple_or_null], null]``."""
        return [[self.id, self.parent.as_tuple() if self.parent else None], None]

    # -- meta -------------------------------------------------------------------------------
    def _get_meta(self) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache
        meta = self.backend.get_task_meta(self.id)
        if meta.get("status") in states.READY_STATES:
            self._cache = meta
        return meta

    @property
    def state(self) -> str:
        return str(self._get_meta()["status"])

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception for failed/retried/revoked tasks."""
        meta = self._get_meta()
        if meta["status"] in states.EXCEPTION_STATES:
            return self.backend.exception_from_meta(meta)
        return meta.get("result")

    info = result

    @property
    def traceback(self) -> str | None:
        return self._get_meta().get("traceback")

    @property
    def date_done(self) -> datetime | None:
        return parse_time(self._get_meta().get("date_done"), "date_done")

    def _extended(self, key: str) -> Any:
        return self._get_meta().get(key)

    name = property(lambda self: self._extended("name"))
    args = property(lambda self: self._extended("args"))
    kwargs = property(lambda self: self._extended("kwargs"))
    worker = property(lambda self: self._extended("worker"))
    retries = property(lambda self: self._extended("retries"))
    queue = property(lambda self: self._extended("queue"))

    @property
    def children(self) -> list[Any]:
        """Results of the tasks this one sent (stored in its meta once it finished)."""
        return [result_from_tuple(child, self.app) for child in self._get_meta().get("children") or ()]

    def collect(self, intermediate: bool = False, timeout: float | None = None) -> Any:
        """Yield ``(result, value)`` for this task and, depth first, every task it sent."""
        stack: list[Any] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, GroupResult):
                stack.extend(reversed(node.results))
                continue
            value = node.get(timeout=timeout, disable_sync_subtasks=False)
            yield node, value
            stack.extend(reversed(node.children))

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    # -- waiting ----------------------------------------------------------------------------
    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        on_interval: Callable[[], None] | None = None,
        on_message: Callable[[dict[str, Any]], Any] | None = None,
        **kwargs: Any,
    ) -> R:
        """Wait for the task and return its value; re-raise its exception when ``propagate``.

        ``on_message(meta)`` is called with each state the task stores while waiting (a custom
        ``PROGRESS``, ``STARTED``, ``RETRY``) and with the final one, as in Celery. Raises
        ``taskq.exceptions.TimeoutError`` after ``timeout`` seconds.
        """
        if disable_sync_subtasks:
            _refuse_inside_task()
        if self._cache is None and on_message is not None:
            meta = self._wait_reporting(timeout, interval, on_interval, on_message)
        else:
            meta = self._cache or self.backend.wait_for(
                self.id, timeout=timeout, interval=interval, on_interval=on_interval
            )
        self._cache = meta
        if self._callbacks:
            self._fire()
        if meta["status"] in states.PROPAGATE_STATES and propagate:
            raise self.backend.exception_from_meta(meta)
        return self.result

    wait = get

    def _wait_reporting(
        self,
        timeout: float | None,
        interval: float,
        on_interval: Callable[[], None] | None,
        on_message: Callable[[dict[str, Any]], Any],
    ) -> dict[str, Any]:
        """Poll the stored state and report every change: the backends notify only the final one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        step = min(interval, 0.05)  # progress is worth seeing promptly
        seen: tuple[str, str] | None = None
        while True:
            meta = self.backend.get_task_meta(self.id)
            shown = (meta["status"], repr(meta.get("result")))
            if meta["status"] != states.PENDING and shown != seen:
                seen = shown
                on_message(meta)
            if meta["status"] in states.READY_STATES:
                return meta
            if on_interval is not None:
                on_interval()
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultTimeout(f"the operation timed out after {timeout} s (task {self.id})")
            time.sleep(step if deadline is None else min(step, max(deadline - time.monotonic(), 0)))

    def then(
        self,
        callback: Callable[[AsyncResult[R]], Any],
        on_error: Callable[[BaseException], Any] | None = None,
    ) -> AsyncResult[R]:
        """Call ``callback(result)`` once the result is ready: now if it is, else on ``get()``.

        Like Celery's, callbacks run in the thread that waits; nothing runs in the background.
        """
        self._callbacks.append((callback, on_error))
        if self._cache is not None or self.ready():
            self._fire()
        return self

    def _fire(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback, on_error in callbacks:
            try:
                callback(self)
            except Exception as exc:
                if on_error is None:
                    raise
                on_error(exc)

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM", **kwargs: Any) -> None:
        """Ask every worker not to run this task (REVOKED is stored while it is still pending)."""
        self.app.control.revoke(self.id, terminate=terminate, signal=signal, **kwargs)

    def forget(self) -> None:
        """Delete the stored result."""
        self._cache = None
        self.backend.forget(self.id)


class EagerResult(AsyncResult[R]):
    """The result of a task run in this process (``apply()``, ``task_always_eager``)."""

    def __init__(
        self,
        id: str,  # noqa: A002
        ret_value: Any,
        state: str,
        traceback: str | None = None,
        app: App | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(id, app=app, task_name=name)
        self._cache = {
            "status": state, "result": ret_value, "traceback": traceback, "task_id": id, "name": name,
        }  # fmt: skip

    def _get_meta(self) -> dict[str, Any]:
        assert self._cache is not None
        return self._cache

    @property
    def result(self) -> Any:
        return self._cache["result"] if self._cache else None

    info = result

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
        on_interval: Callable[[], None] | None = None,
        on_message: Callable[[dict[str, Any]], Any] | None = None,
        **kwargs: Any,
    ) -> R:
        # Already finished: like Celery's EagerResult, nothing is reported to on_message.
        if propagate and self.state in states.PROPAGATE_STATES:
            raise self.result
        return self.result

    wait = get

    def forget(self) -> None:
        """Nothing is stored for an eager run unless ``task_store_eager_result`` is on."""
        if self.app.conf.task_store_eager_result:
            self.backend.forget(self.id)

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"


class ResultSet:
    """Several results waited on together; ``GroupResult`` adds an id and persistence."""

    def __init__(self, results: Sequence[AsyncResult[Any]] | None = None, app: App | None = None) -> None:
        self.results: list[AsyncResult[Any]] = list(results or [])
        self.app = app or (self.results[0].app if self.results else _state.current_app())

    def __iter__(self) -> Any:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult[Any]:
        return self.results[index]

    def add(self, result: AsyncResult[Any]) -> None:
        if result not in self.results:
            self.results.append(result)

    def discard(self, result: AsyncResult[Any] | str) -> None:
        self.results = [r for r in self.results if r != result]

    remove = discard

    def update(self, results: list[AsyncResult[Any]]) -> None:
        for result in results:
            self.add(result)

    def clear(self) -> None:
        self.results.clear()

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        """How many members finished successfully."""
        return sum(1 for r in self.results if r.successful())

    def join(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        callback: Callable[[str, Any], Any] | None = None,
        disable_sync_subtasks: bool = True,
        **kwargs: Any,
    ) -> list[Any]:
        """Every member's value, in order; ``timeout`` bounds the whole wait, not each member."""
        if disable_sync_subtasks:
            _refuse_inside_task()
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            value = result.get(
                timeout=remaining, propagate=propagate, interval=interval, disable_sync_subtasks=False
            )
            if callback is not None:
                callback(result.id, value)
            else:
                values.append(value)
        return values

    get = join
    join_native = join

    def forget(self) -> None:
        for result in self.results:
            result.forget()

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM", **kwargs: Any) -> None:
        """Revoke every member with one broadcast."""
        self.app.control.revoke([r.id for r in self.results], terminate=terminate, signal=signal, **kwargs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: [{', '.join(r.id for r in self.results)}]>"


class GroupResult(ResultSet):
    """The results of a group, under the group's id (``save()`` makes it restorable)."""

    def __init__(
        self,
        id: str | None = None,  # noqa: A002
        results: Sequence[AsyncResult[Any]] | None = None,
        parent: AsyncResult[Any] | None = None,
        app: App | None = None,
    ) -> None:
        super().__init__(results, app)
        self.id = id or ""
        self.parent = parent

    @property
    def children(self) -> list[AsyncResult[Any]]:
        return self.results

    def as_tuple(self) -> list[Any]:
        """Celery's result tuple: ``[[id, parent_or_null], [member tuples...]]``."""
        return [
            [self.id, self.parent.as_tuple() if self.parent else None],
            [r.as_tuple() for r in self.results],
        ]

    def save(self, backend: ResultBackend | None = None) -> GroupResult:
        """Store the membership so ``GroupResult.restore(id)`` works in any process."""
        (backend or self.app.backend).save_group(self.id, self)
        return self

    def delete(self, backend: ResultBackend | None = None) -> None:
        (backend or self.app.backend).delete_group(self.id)

    @classmethod
    def restore(
        cls,
        id: str,  # noqa: A002
        backend: ResultBackend | None = None,
        app: App | None = None,
    ) -> GroupResult | None:
        app = app or _state.current_app()
        return (backend or app.backend).restore_group(id)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GroupResult):
            return self.id == other.id and self.results == other.results
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)


def result_from_tuple(value: Any, app: App | None = None) -> AsyncResult[Any] | GroupResult:
    """Rebuild a result from Celery's tuple form (as stored in ``children`` and group metas)."""
    (id_, parent), nodes = value
    parent_result = result_from_tuple(parent, app) if parent else None
    if nodes is not None:
        members = [result_from_tuple(node, app) for node in nodes]
        return GroupResult(id_, members, parent=parent_result, app=app)  # type: ignore[arg-type]
    return AsyncResult(id_, app=app, parent=parent_result)  # type: ignore[arg-type]
