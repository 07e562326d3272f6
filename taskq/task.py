"""Tasks: the decorated function, how it is called, and the request it runs under.

``Task[P, R]`` carries the function's parameter types so ``add.delay(1, "x")`` is a mypy error
where ``add(x: int, y: int)``. Calling a task runs it here; ``delay``/``apply_async`` send it;
``apply`` runs it here the way a worker would (same code path, ``worker.execute``).
"""

from __future__ import annotations

import inspect
import logging
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, TypeVar

from kombu import serialization

from taskq import _state, exceptions
from taskq.canvas import Signature

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.backend.base import ResultBackend
    from taskq.result import AsyncResult, EagerResult

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("taskq.task")


class Context:
    """``task.request``: what the running task knows about its own message.

    Field names are Celery's; unknown message headers become attributes too, as in Celery.
    """

    id: str | None = None
    task: str | None = None
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = {}
    retries: int = 0
    is_eager: bool = False
    eta: Any = None
    expires: Any = None
    hostname: str | None = None
    delivery_info: dict[str, Any] = {}
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    chord: Any = None
    chain: Any = None
    callbacks: Any = None
    errbacks: Any = None
    correlation_id: str | None = None
    reply_to: str | None = None
    headers: dict[str, Any] | None = None
    called_directly: bool = True
    timelimit: tuple[float | None, float | None] | None = None
    origin: str | None = None
    ignore_result: bool = False
    shadow: str | None = None
    properties: dict[str, Any] = {}
    utc: bool = True

    def __init__(self, **fields: Any) -> None:
        self.children: list[AsyncResult[Any]] = []
        self.__dict__.update(fields)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __repr__(self) -> str:
        return f"<Context {self.task}[{self.id}]>"


class Task(Generic[P, R]):
    """A registered task. Class attributes are the defaults a decorator option overrides."""

    name: str = ""
    _app: App | None = None
    run: Callable[..., Any]
    typing: bool = True
    max_retries: int | None = 3
    default_retry_delay: float = 180
    rate_limit: str | float | None = None
    ignore_result: bool = False
    store_errors_even_if_ignored: bool = False
    serializer: str | None = None
    compression: str | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool | None = None
    reject_on_worker_lost: bool | None = None
    track_started: bool | None = None
    priority: int | None = None
    expires: float | None = None
    queue: str | None = None
    routing_key: str | None = None
    exchange: str | None = None
    delivery_mode: int | None = None
    shadow: str | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] = {}
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    throws: tuple[type[BaseException], ...] = ()
    MaxRetriesExceededError = exceptions.MaxRetriesExceededError
    #: options a decorator or subclass may set; anything else given to ``@app.task`` is an error
    OPTIONS: ClassVar[frozenset[str]] = frozenset(
        {
            "name", "typing", "max_retries", "default_retry_delay", "rate_limit",
            "ignore_result", "store_errors_even_if_ignored", "serializer", "compression",
            "time_limit", "soft_time_limit", "acks_late", "reject_on_worker_lost",
            "track_started", "priority", "expires", "queue", "routing_key", "exchange",
            "delivery_mode", "shadow", "autoretry_for", "dont_autoretry_for", "retry_kwargs",
            "retry_backoff", "retry_backoff_max", "retry_jitter", "throws", "trail",
            "send_events", "resultrepr_maxsize", "acks_on_failure_or_timeout", "lazy", "shared",
        }
    )  # fmt: skip
    _bound_self: bool = False  # bind=True: the function receives the task as first argument
    _is_async: bool = False
    _shared: bool = False

    # -- identity ---------------------------------------------------------------------------
    @property
    def app(self) -> App:
        """The app this task belongs to; a ``shared_task`` belongs to whichever app is current."""
        return self._app if self._app is not None else _state.current_app()

    @app.setter
    def app(self, value: App | None) -> None:
        self._app = value

    def __repr__(self) -> str:
        return f"<@task: {self.name} of {getattr(self.app, 'main', None)}>"

    @property
    def request(self) -> Context:
        """The request of the current run of this task (an empty one outside a run)."""
        found = _state._current_request.get()
        if found is not None and found[0] is self:
            return found[1]
        return Context(task=self.name)

    @property
    def backend(self) -> ResultBackend:
        return self.app.backend

    # -- calling ----------------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task function here and now, as a plain call."""
        return self.run(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task with these arguments; shortcut of ``apply_async``."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task to a worker (or run it here when ``task_always_eager`` is on)."""
        args = tuple(args) if args is not None else ()
        kwargs = dict(kwargs) if kwargs is not None else {}
        if self.typing:
            self.check_arguments(args, kwargs)
        if self.app.conf.task_always_eager:
            # Celery 5.7: the arguments go through the serializer, as if sent and received.
            serializer = options.get("serializer") or self.serializer or self.app.conf.task_serializer
            content_type, encoding, data = serialization.dumps((args, kwargs), serializer=serializer)
            args, kwargs = serialization.loads(data, content_type, encoding, accept=[content_type])
            return self.apply(args, kwargs, task_id=task_id, **options)
        for attr in (
            "queue", "routing_key", "exchange", "priority", "shadow", "expires", "delivery_mode",
            "time_limit", "soft_time_limit",
        ):  # fmt: skip
            if options.get(attr) is None and getattr(self, attr, None) is not None:
                options[attr] = getattr(self, attr)
        return self.app.send_task(self.name, args, kwargs, task_id=task_id, task=self, **options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        task_id: str | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task here, through the same code path a worker uses."""
        from taskq.result import EagerResult
        from taskq.worker.execute import execute

        task_id = task_id or str(uuid.uuid4())
        parent = _state.current_request()
        retries = int(options.get("retries") or 0)
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        store = bool(self.app.conf.task_store_eager_result)
        headers = dict(options.get("headers") or {})
        limits = (
            options.get("time_limit", self.time_limit),
            options.get("soft_time_limit", self.soft_time_limit),
        )
        while True:
            context = Context(
                **{k: v for k, v in headers.items() if not hasattr(Context, k)},
                id=task_id,
                task=self.name,
                args=args,
                kwargs=kwargs,
                is_eager=True,
                called_directly=False,
                root_id=(parent.root_id if parent else None) or task_id,
                parent_id=parent.id if parent else None,
                retries=retries,
                headers=headers or None,
                hostname=socket.gethostname(),
                timelimit=None if limits == (None, None) else limits,
                delivery_info={"is_eager": True},
                ignore_result=options.get("ignore_result", self.ignore_result),
                callbacks=_as_signature_list(options.get("link")),
                errbacks=_as_signature_list(options.get("link_error")),
            )
            outcome = execute(self, context, store_result=store)
            retry = outcome.exc if isinstance(outcome.exc, exceptions.Retry) else None
            if retry is None or retry.sig is None:
                break
            # An eager retry runs again at once, here, with the arguments it was given.
            args, kwargs, retries = retry.sig.args, retry.sig.kwargs, retries + 1
        throw = options.get("throw")
        if outcome.exc is not None and (self.app.conf.task_eager_propagates if throw is None else throw):
            raise outcome.exc
        value = outcome.retval if outcome.exc is None else outcome.exc
        return EagerResult(task_id, value, outcome.state, outcome.traceback, app=self.app, name=self.name)

    def check_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Fail at send time, as Celery does, when the arguments cannot bind to the function."""
        run = self.run
        cached = self.__dict__.get("_signature")
        if cached is not None and cached[0] == run:
            signature = cached[1]
        else:  # inspect.signature costs more than the rest of a publish's own work
            try:
                signature = inspect.signature(run)
            except (TypeError, ValueError):
                signature = None
            self.__dict__["_signature"] = (run, signature)
        if signature is None:
            return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{signature}: {exc}") from None

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:  # noqa: N802 - Celery's name
        from taskq.result import AsyncResult

        return AsyncResult(task_id, app=self.app, task_name=self.name)

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None) -> None:
        """Store a custom state (e.g. ``PROGRESS``) for this or another task."""
        request = self.request
        task_id = task_id or request.id
        if task_id is None:
            raise ValueError("update_state needs a task_id outside a running task")
        self.backend.store_result(
            task_id, meta, state or "PENDING", request=request if request.id == task_id else None
        )

    # -- retrying ---------------------------------------------------------------------------
    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> exceptions.Retry:
        """Re-send this task to run again later; raises ``Retry`` (use ``raise self.retry(...)``).

        Past ``max_retries`` (default 3; None retries forever) the task fails with ``exc``
        when given, else ``MaxRetriesExceededError``.
        """
        from taskq.retry import retry

        return retry(self, args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    # -- signatures -------------------------------------------------------------------------
    def signature(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature:
        return Signature(self, args, kwargs, options.pop("options", None), app=self.app, **options)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with these (partial) arguments."""
        return Signature(self, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a parent's result is not prepended to its arguments."""
        return Signature(self, args, kwargs, app=self.app, immutable=True)

    def map(self, it: Any) -> Signature:
        """``[task(x) for x in it]`` in one task (Celery's xmap)."""
        from taskq.canvas_tasks import task_map

        return task_map(self, it)

    def starmap(self, it: Any) -> Signature:
        """``[task(*args) for args in it]`` in one task (Celery's xstarmap)."""
        from taskq.canvas_tasks import task_starmap

        return task_starmap(self, it)

    def chunks(self, it: Any, n: int) -> Signature:
        """The argument tuples in ``it`` split into a group of tasks of ``n`` calls each."""
        from taskq.canvas_tasks import task_chunks

        return task_chunks(self, it, n)

    # -- handlers (override in a base class) ------------------------------------------------
    def before_start(self, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Called in the worker just before the task runs."""

    def on_success(self, retval: Any, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Called after the task returned (and its result was stored)."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any], einfo: Any
    ) -> None:
        """Called after the task raised (and the failure was stored)."""

    def on_retry(
        self, exc: BaseException, task_id: str, args: Sequence[Any], kwargs: Mapping[str, Any], einfo: Any
    ) -> None:
        """Called when the task asked to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        einfo: Any,
    ) -> None:
        """Called after every run, whatever its outcome."""


def _as_signature_list(value: Any) -> list[Any] | None:
    if value is None:
        return None
    return list(value) if isinstance(value, (list, tuple)) else [value]


def make_task_class(
    fun: Callable[..., Any],
    app: App | None,
    base: type[Task[Any, Any]],
    name: str,
    bind: bool,
    options: Mapping[str, Any],
) -> Task[Any, Any]:
    """Build the task instance for a decorated function, Celery's way: a subclass per task."""
    unknown = set(options) - base.OPTIONS - {k for k in options if hasattr(base, k)}
    if unknown:
        raise TypeError(f"unknown task option(s) for {name}: {', '.join(sorted(unknown))}")
    run = fun
    attrs: dict[str, Any] = {
        "name": name,
        "__doc__": fun.__doc__,
        "__module__": fun.__module__,
        "__qualname__": getattr(fun, "__qualname__", name),
        "__wrapped__": staticmethod(fun),  # the plain function, not a bound method
        "_bound_self": bind,
        "_is_async": inspect.iscoroutinefunction(fun),
        **options,
    }
    cls = type(fun.__name__, (base,), attrs)
    task = cls()
    task._app = app
    task.run = run.__get__(task) if bind else run
    from taskq.retry import add_autoretry

    add_autoretry(task)
    return task
