"""The application: configuration, the task registry, and sending tasks.

An ``App`` is created at import time of a user's module, so creating one does no I/O: the
broker and the result backend are connected on first use. ``Celery`` is the same class under
Celery's name, so a Celery project ports by changing its import.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Any, Concatenate, Literal, TypeVar, overload
from zoneinfo import ZoneInfo

from taskq import _state, signals
from taskq.config import Settings, import_object, load_config_source
from taskq.exceptions import ImproperlyConfigured, NotRegistered
from taskq.result import AsyncResult
from taskq.task import P, R, Task, make_task_class

if TYPE_CHECKING:
    from taskq.backend.base import ResultBackend
    from taskq.broker import Broker
    from taskq.canvas import Signature
    from taskq.control import Control
    from taskq.events import Events
    from taskq.result import GroupResult

logger = logging.getLogger("taskq.app")
_AsyncResult = AsyncResult  # the method App.AsyncResult shadows the class inside the class body
T = TypeVar("T", bound=Task[Any, Any])

EMBEDDED_FILE = "taskq.sqlite3"
_shared_tasks: list[tuple[Callable[..., Any], dict[str, Any]]] = []
_live_apps: weakref.WeakSet[App] = weakref.WeakSet()


def _new_locks_after_fork() -> None:
    # A thread of the parent may hold an app's lock as it forks (the worker creating its result
    # store while billiard forks a replacement child): the child would wait on it forever.
    for app in list(_live_apps):
        app._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_after_fork)


class TaskRegistry(dict[str, Task[Any, Any]]):
    """Tasks by name; a missing name is ``NotRegistered``, not a bare ``KeyError``."""

    def __missing__(self, key: str) -> Task[Any, Any]:
        raise NotRegistered(key)


class App:
    """A taskq application (``Celery`` is an alias)."""

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        include: Iterable[str] | None = None,
        config_source: Any = None,
        set_as_current: bool = True,
        task_cls: type[Task[Any, Any]] | str | None = None,
        namespace: str | None = None,
        strict_typing: bool = True,
        changes: Mapping[str, Any] | None = None,
        config_source_silent: bool = False,
        loader: Any = None,
        amqp: Any = None,
        events: Any = None,
        log: Any = None,
        control: Any = None,
        tasks: Any = None,
        fixups: Any = None,
        autofinalize: bool = True,
        **settings: Any,
    ) -> None:
        # loader/amqp/events/log/control/tasks/fixups/autofinalize are Celery's extension points;
        # they are accepted so a ported constructor call works, and taskq has no use for them.
        self.main = main
        self.conf = Settings()
        self.strict_typing = strict_typing
        if isinstance(task_cls, str):
            task_cls = import_object(task_cls)
        self.Task: type[Task[Any, Any]] = task_cls or Task  # type: ignore[assignment]
        self.tasks = TaskRegistry()
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._control: Control | None = None
        self._pending_autodiscover: list[tuple[Any, str]] = []
        self._lock = threading.Lock()
        self._oids = threading.local()  # thread_oid, per thread
        # Celery's app signals: receivers add periodic tasks (add_periodic_task) and the like.
        self.on_after_configure = signals.Signal("app.on_after_configure", providing_args=("source",))
        self.on_after_finalize = signals.Signal("app.on_after_finalize")
        self.configured = False
        self.finalized = False
        if config_source is not None:
            self.config_from_object(config_source, silent=config_source_silent, namespace=namespace)
        if broker:
            self.conf.broker_url = broker
        if backend:
            self.conf.result_backend = backend
        if include:
            self.conf.include = tuple(self.conf.include) + tuple(include)
        self.conf.update(changes or {})
        self.conf.update(settings)
        if set_as_current:
            _state.set_current_app(self)
        _live_apps.add(self)
        from taskq.builtins import register_builtins
        from taskq.canvas_tasks import register_canvas_tasks

        register_builtins(self)
        register_canvas_tasks(self)
        for fun, opts in _shared_tasks:
            self._task_from_fun(fun, **opts)

    def __repr__(self) -> str:
        return f"<taskq {self.main or '__main__'} at {id(self):#x}>"

    # -- configuration ----------------------------------------------------------------------
    def config_from_object(
        self, obj: Any, silent: bool = False, force: bool = True, namespace: str | None = None
    ) -> None:
        """Read settings from a module, class, object, mapping or their dotted path."""
        source = load_config_source(obj, silent=silent)
        if source is not None:
            self.conf.update_from(source, namespace=namespace)
            self._reset_connections()

    def config_from_envvar(self, variable_name: str, silent: bool = False, force: bool = True) -> None:
        """``config_from_object`` with the module path taken from an environment variable."""
        path = os.environ.get(variable_name)
        if not path:
            if silent:
                return
            raise ImproperlyConfigured(f"environment variable {variable_name!r} is not set")
        self.config_from_object(path, silent=silent)

    def add_defaults(self, values: Mapping[str, Any]) -> None:
        self.conf.add_defaults(values)

    def _reset_connections(self) -> None:
        if self._backend is not None:
            self._backend.close()
        if self._broker is not None:
            self._broker.close()
        self._broker = None
        self._backend = None

    @property
    def timezone(self) -> tzinfo:
        name = self.conf.timezone
        if name:
            return name if isinstance(name, tzinfo) else ZoneInfo(str(name))
        if self.conf.enable_utc:
            return timezone.utc
        return _local_zone()

    def now(self) -> datetime:
        """Aware current time in the app's time zone (ETAs, ``date_done``)."""
        return datetime.now(tz=self.timezone)

    # -- broker and backend -----------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        """True when no broker is configured and the SQLite file serves as broker and backend."""
        return not self.conf.broker_url

    @property
    def broker_url(self) -> str:
        url = self.conf.broker_url
        if url:
            return str(url)
        path = self.conf.taskq_sqlite_path or os.path.join(os.getcwd(), EMBEDDED_FILE)
        return f"sqlite:///{os.path.abspath(path)}"

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    from taskq.broker import Broker

                    self._broker = Broker(self.conf.broker_write_url or self.broker_url, self.conf)
        return self._broker

    @property
    def backend(self) -> ResultBackend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    from taskq.backend import backend_from_url

                    self._backend = backend_from_url(self, self.result_backend_url)
        return self._backend

    @property
    def result_backend_url(self) -> str | None:
        """The configured backend, else the broker's own store for sqlite:// and memory://."""
        url = self.conf.result_backend
        if url:
            return str(url)
        broker = self.broker_url
        if broker.startswith(("sqlite:", "memory:")):
            return broker
        return None

    @property
    def thread_oid(self) -> str:
        """Per-thread reply address (``reply_to``), derived as Celery derives it.

        Every send asks for it: computed once per thread (and again in a forked child).
        """
        pid = os.getpid()
        known: tuple[int, str] | None = getattr(self._oids, "oid", None)
        if known is None or known[0] != pid:
            node = f"{uuid.getnode():x}-{pid:x}-{threading.get_ident():x}-{id(self):x}"
            known = (pid, str(uuid.uuid3(uuid.NAMESPACE_OID, node)))
            self._oids.oid = known
        return known[1]

    def AsyncResult(self, task_id: str, **kwargs: Any) -> _AsyncResult[Any]:  # noqa: N802
        return AsyncResult(task_id, app=self, **kwargs)

    @property
    def control(self) -> Control:
        """Remote control of the workers (``revoke``, ``ping``, ``broadcast``)."""
        if self._control is None:
            from taskq.control import Control

            self._control = Control(self)
        return self._control

    @property
    def events(self) -> Events:
        """Monitoring events: ``Dispatcher``, ``Receiver`` and ``State``, called as Celery's are."""
        from taskq.events import events_of

        return events_of(self)

    def signature(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature bound to this app: ``app.signature("tasks.add", args=(2, 2), countdown=10)``."""
        from taskq.canvas import signature

        kwargs["app"] = self
        return signature(*args, **kwargs)

    @property
    def GroupResult(self) -> type[GroupResult]:  # noqa: N802 - Celery's name
        """``app.GroupResult(id, results)`` and ``app.GroupResult.restore(id)``, bound to this app."""
        from taskq.result import GroupResult

        app = self

        class AppGroupResult(GroupResult):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs.setdefault("app", app)
                super().__init__(*args, **kwargs)

            @classmethod
            def restore(cls, id: str, backend: Any = None, app: Any = app) -> GroupResult | None:  # noqa: A002
                return GroupResult.restore(id, backend=backend, app=app)

        return AppGroupResult

    def close(self) -> None:
        """Release broker and backend connections (they reopen on next use)."""
        self._reset_connections()

    # -- tasks ------------------------------------------------------------------------------
    @overload
    def task(self, fun: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fun: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        *,
        bind: Literal[True],
        name: str | None = ...,
        base: type[Task[Any, Any]] | None = ...,
        **options: Any,
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...
    @overload
    def task(
        self,
        *,
        bind: Literal[False] = ...,
        name: str | None = ...,
        base: type[Task[Any, Any]] | None = ...,
        **options: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(  # type: ignore[misc]  # mypy cannot match **options against positional-only fun
        self,
        fun: Callable[..., Any] | None = None,
        /,
        *,
        bind: bool = False,
        name: str | None = None,
        base: type[Task[Any, Any]] | None = None,
        **options: Any,
    ) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(name=..., bind=True)``."""
        if fun is not None:
            if not callable(fun):
                raise TypeError("@app.task takes a function; use @app.task(...) for options")
            return self._task_from_fun(fun, name=name, base=base, bind=bind, **options)

        def decorate(f: Callable[..., Any]) -> Task[Any, Any]:
            return self._task_from_fun(f, name=name, base=base, bind=bind, **options)

        return decorate

    def _task_from_fun(
        self,
        fun: Callable[..., Any],
        name: str | None = None,
        base: type[Task[Any, Any]] | None = None,
        bind: bool = False,
        **options: Any,
    ) -> Task[Any, Any]:
        name = name or self.gen_task_name(fun.__name__, fun.__module__)
        existing = self.tasks.get(name)
        if existing is not None and getattr(existing, "__wrapped__", None) is fun:
            return existing
        options.setdefault("typing", self.strict_typing)
        task = make_task_class(fun, self, base or self.Task, name, bind, options)
        self.tasks[name] = task
        return task

    def register_task(self, task: Task[Any, Any] | type[Task[Any, Any]]) -> Task[Any, Any]:
        """Register a class-based task (an instance or the class itself)."""
        instance = task() if isinstance(task, type) else task
        if not instance.name:
            cls = type(instance)
            instance.name = self.gen_task_name(cls.__name__, cls.__module__)
        instance.app = self
        from taskq.retry import add_autoretry

        add_autoretry(instance)
        self.tasks[instance.name] = instance
        return instance

    def gen_task_name(self, name: str, module: str) -> str:
        """``module.function``; a task defined in ``__main__`` is named after the app's main."""
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{name}"

    def finalize(self) -> None:
        """Send ``on_after_configure`` then ``on_after_finalize``, once (worker and beat start-up)."""
        if not self.configured:
            self.configured = True
            self.on_after_configure.send(sender=self, source=self.conf)
        if not self.finalized:
            self.finalized = True
            self.on_after_finalize.send(sender=self)

    def add_periodic_task(
        self, schedule: Any, sig: Any, args: Any = (), kwargs: Any = (), name: str | None = None, **opts: Any
    ) -> str:
        """Add an entry to ``beat_schedule`` (Celery's API; call it from on_after_configure)."""
        from taskq.beat import add_periodic_task

        return add_periodic_task(self, schedule, sig, args, kwargs, name, **opts)

    # -- modules ----------------------------------------------------------------------------
    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` for each package, now (``force``) or when a worker starts."""
        self._pending_autodiscover.append((packages, related_name))
        if force:
            self._run_autodiscover()

    def _run_autodiscover(self) -> None:
        pending, self._pending_autodiscover = self._pending_autodiscover, []
        for packages, related_name in pending:
            names = packages() if callable(packages) else packages
            for package in names or ():
                module = f"{package}.{related_name}" if related_name else package
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as exc:
                    if exc.name not in (module, package):
                        raise  # a real import error inside the tasks module must surface

    def import_modules(self) -> None:
        """Import ``imports``/``include`` and autodiscovered modules, so their tasks register."""
        signals.import_modules.send(sender=self)
        for module in (*self.conf.imports, *self.conf.include):
            importlib.import_module(module)
        self._run_autodiscover()

    def setup_security(
        self,
        allowed_serializers: Sequence[str] | None = None,
        key: str | None = None,
        key_password: str | bytes | None = None,
        cert: str | None = None,
        store: str | None = None,
        digest: str | None = None,
        serializer: str = "json",
    ) -> None:
        """Sign and verify messages (Celery's ``auth``, or taskq's ``hmac``): docs/security.md."""
        from taskq.security import setup_security

        setup_security(self, allowed_serializers, key, key_password, cert, store, digest, serializer)

    # -- sending ----------------------------------------------------------------------------
    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        task_id: str | None = None,
        expires: float | datetime | str | None = None,
        **options: Any,
    ) -> _AsyncResult[Any]:
        """Send a task by name; the task need not be registered in this process."""
        from taskq.sending import send_task

        return send_task(self, name, args, kwargs, countdown, eta, task_id, expires, **options)


def _local_zone() -> tzinfo:
    """The system's IANA zone (so local crontabs follow DST), else its current fixed offset."""
    name = os.environ.get("TZ", "").lstrip(":")
    if not name and os.path.islink("/etc/localtime"):
        target = os.path.realpath("/etc/localtime")
        name = target.partition("zoneinfo/")[2]
    if name:
        try:
            return ZoneInfo(name)
        except (ValueError, OSError):  # not an IANA name: fall back to the offset
            pass
    return datetime.now().astimezone().tzinfo or timezone.utc


Celery = App


def shared_task(*args: Any, **options: Any) -> Any:
    """A task for reusable apps: registered on every app, existing and created later.

    The returned task belongs to no app in particular: calling ``.delay()`` on it sends
    through whichever app is current at that moment, as Celery's shared tasks do.
    """

    def decorate(fun: Callable[..., Any]) -> Task[Any, Any]:
        _shared_tasks.append((fun, dict(options)))
        for app in list(_live_apps):
            app._task_from_fun(fun, **options)
        current = _state.current_app()  # creates the default app when none exists yet
        registered = current.tasks[options.get("name") or current.gen_task_name(fun.__name__, fun.__module__)]
        return make_task_class(
            fun, None, options.get("base") or current.Task, registered.name, bool(options.get("bind")),
            {k: v for k, v in options.items() if k not in ("name", "base", "bind")} | {"typing": registered.typing},
        )  # fmt: skip

    if len(args) == 1 and callable(args[0]) and not options:
        return decorate(args[0])
    return decorate
