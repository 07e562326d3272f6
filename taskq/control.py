"""Remote control, client side: ``app.control`` and ``app.control.inspect()``.

The same kombu mailbox as Celery's (``celery.pidbox`` fanout), names and argument spellings, so
taskq's commands reach Celery workers and Celery's tools (``celery inspect``, Flower) reach taskq
workers. Return shapes are Celery's, for code written against it: ``broadcast`` gives a list of
``{node: reply}``, ``Inspect`` methods one ``{node: reply}`` dict, or None if no node answered.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from kombu.clocks import LamportClock
from kombu.matcher import match
from kombu.pidbox import Mailbox

if TYPE_CHECKING:
    from kombu import Connection

    from taskq.app import App

TERM_SIGNAME = "SIGTERM"
Replies = list[dict[str, Any]]
Dest = str | Sequence[str] | None  # node names; one name is taken as a list of one
_clocks: weakref.WeakKeyDictionary[Any, LamportClock] = weakref.WeakKeyDictionary()


class DuplicateNodenameWarning(UserWarning):
    """Two workers answered under one node name: their replies hide each other (use ``-n``)."""


def app_clock(app: App) -> LamportClock:
    """The app's one Lamport clock, as Celery's ``app.clock``: events and commands share it."""
    for clock in (getattr(app, "clock", None), getattr(getattr(app, "events", None), "clock", None)):
        if isinstance(clock, LamportClock):
            return clock
    return _clocks.setdefault(app, LamportClock())


def mailbox_for(app: App) -> Mailbox:
    """The app's pidbox mailbox with Celery's names, serializer and queue lifetimes."""
    conf = app.conf
    options: dict[str, Any] = {}
    # Only when changed: kombu before 5.4 has neither argument, and the defaults are its own.
    if conf.control_queue_durable:
        options["queue_durable"] = True
    if not conf.control_queue_exclusive:
        options["queue_exclusive"] = False
    return Mailbox(
        conf.control_exchange,
        type="fanout",
        clock=app_clock(app),
        accept=list(conf.accept_content or ["json"]),
        serializer=conf.task_serializer,
        queue_ttl=conf.control_queue_ttl,
        reply_queue_ttl=conf.control_queue_ttl,
        queue_expires=conf.control_queue_expires,
        reply_queue_expires=conf.control_queue_expires,
        **options,
    )


def flatten_reply(replies: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``[{node: reply}, ...]`` as one ``{node: reply}`` dict, warning about duplicate names."""
    nodes: dict[str, Any] = {}
    dupes: set[str] = set()
    for item in replies:
        dupes.update(name for name in item if name in nodes)
        nodes.update(item)
    if dupes:
        warnings.warn(
            DuplicateNodenameWarning(
                f"Received multiple replies from node name(s): {', '.join(sorted(dupes))}. "
                "Give each worker a unique node name with the -n option."
            ),
            stacklevel=2,
        )
    return nodes


class Inspect:
    """``app.control.inspect()``: read-only questions to the workers, one dict of answers per call."""

    def __init__(
        self,
        destination: Dest = None,
        timeout: float = 1.0,
        callback: Callable[[dict[str, Any]], Any] | None = None,
        connection: Connection | None = None,
        app: App | None = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> None:
        if app is None:
            from taskq._state import current_app

            app = current_app()
        self.app = app
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.connection = connection
        self.limit = limit
        self.pattern = pattern
        self.matcher = matcher

    def _prepare(self, reply: Replies | None) -> Any:
        """Celery's shaping: None without replies; one node's reply for a single-name destination."""
        if not reply:
            return None
        by_node = flatten_reply(reply)
        if isinstance(self.destination, str):
            return by_node.get(self.destination)
        if self.pattern:
            pattern, matcher = self.pattern, self.matcher
            return {node: r for node, r in by_node.items() if match(node, pattern, matcher)}  # type: ignore[arg-type]
        return by_node

    def _request(self, command: str, **kwargs: Any) -> Any:
        return self._prepare(
            self.app.control.broadcast(
                command,
                arguments=kwargs,
                destination=self.destination,
                callback=self.callback,
                connection=self.connection,
                limit=self.limit,
                timeout=self.timeout,
                reply=True,
                pattern=self.pattern,
                matcher=self.matcher,
            )
        )

    def report(self) -> dict[str, Any] | None:
        """``{node: {"ok": text}}``: versions and (masked) settings, for bug reports."""
        return self._request("report")

    def clock(self) -> dict[str, Any] | None:
        return self._request("clock")

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        """``{node: [task info, ...]}`` of running tasks; ``safe`` sends argsrepr, not args."""
        return self._request("active", safe=safe)

    def scheduled(self, safe: bool | None = None) -> dict[str, Any] | None:
        """``{node: [{"eta", "priority", "request"}, ...]}``: tasks held for their ETA."""
        return self._request("scheduled")

    def reserved(self, safe: bool | None = None) -> dict[str, Any] | None:
        """``{node: [task info, ...]}``: received, not yet started, not waiting for an ETA."""
        return self._request("reserved")

    def stats(self) -> dict[str, Any] | None:
        return self._request("stats")

    def revoked(self) -> dict[str, Any] | None:
        return self._request("revoked")

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        """``{node: ["name [attr=value ...]", ...]}``; default attributes are Celery's."""
        return self._request("registered", taskinfoitems=taskinfoitems)

    registered_tasks = registered

    def ping(self, destination: Dest = None) -> dict[str, Any] | None:
        if destination:
            self.destination = destination
        return self._request("ping")

    def active_queues(self) -> dict[str, Any] | None:
        return self._request("active_queues")

    def query_task(self, *ids: str | Sequence[str]) -> dict[str, Any] | None:
        """``{node: {task_id: [state, info]}}``, state one of active, reserved, scheduled."""
        if len(ids) == 1 and isinstance(ids[0], (list, tuple)):
            ids = tuple(ids[0])  # the older unary form: query_task([id1, id2])
        return self._request("query_task", ids=ids)

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        return self._request("conf", with_defaults=with_defaults)

    def hello(self, from_node: str, revoked: Any = None) -> dict[str, Any] | None:
        return self._request("hello", from_node=from_node, revoked=revoked)

    def memsample(self) -> dict[str, Any] | None:
        return self._request("memsample")

    def memdump(self, samples: int = 10) -> dict[str, Any] | None:
        return self._request("memdump", samples=samples)

    def objgraph(self, type: str = "Request", n: int = 200, max_depth: int = 10) -> dict[str, Any] | None:  # noqa: A002
        return self._request("objgraph", num=n, max_depth=max_depth, type=type)


class Control:
    """``app.control``: commands to every worker, or to the ``destination`` nodes."""

    def __init__(self, app: App) -> None:
        if app.conf.control_queue_durable and app.conf.control_queue_exclusive:
            from taskq.exceptions import ImproperlyConfigured

            raise ImproperlyConfigured(
                "control_queue_durable and control_queue_exclusive cannot both be True "
                "(exclusive queues are automatically deleted and cannot be durable)."
            )
        self.app = app
        self.mailbox = mailbox_for(app)

    def inspect(
        self,
        destination: Dest = None,
        timeout: float = 1.0,
        callback: Callable[[dict[str, Any]], Any] | None = None,
        connection: Connection | None = None,
        limit: int | None = None,
        pattern: str | None = None,
        matcher: str | None = None,
    ) -> Inspect:
        return Inspect(destination, timeout, callback, connection, self.app, limit, pattern, matcher)

    @contextlib.contextmanager
    def _connection(self, connection: Connection | None) -> Iterator[Connection]:
        with contextlib.nullcontext(connection) if connection else self.app.broker.new_connection() as conn:
            yield conn

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Dest = None,
        connection: Connection | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        callback: Callable[[dict[str, Any]], Any] | None = None,
        channel: Any = None,
        pattern: str | None = None,
        matcher: str | None = None,
        **extra_kwargs: Any,
    ) -> Replies | None:
        """Send ``command``; with ``reply``, the answers that came within ``timeout`` seconds.

        The wait ends early once every named destination answered (or ``limit`` replies came).
        """
        arguments = dict(arguments or {}, **extra_kwargs)
        if isinstance(destination, str):
            destination = [destination]  # Celery's _broadcast would refuse it; one name is clear
        options: dict[str, Any] = {"pattern": pattern, "matcher": matcher} if pattern and matcher else {}
        with self._connection(connection) as conn:
            replies: Replies | None = self.mailbox(conn)._broadcast(
                command,
                arguments,
                list(destination) if destination else None,
                reply,
                timeout,
                limit,
                callback,
                channel=channel,
                **options,
            )
        return replies

    def ping(self, destination: Dest = None, timeout: float = 1.0, **kwargs: Any) -> Replies:
        """``[{node: {"ok": "pong"}}, ...]`` from every worker that answered in time."""
        kwargs.setdefault("reply", True)
        return self.broadcast("ping", {}, destination=destination, timeout=timeout, **kwargs) or []

    def revoke(
        self,
        task_id: str | Iterable[str],
        destination: Dest = None,
        terminate: bool = False,
        signal: str = TERM_SIGNAME,
        **kwargs: Any,
    ) -> Replies | None:
        """Tell the workers not to run these tasks (their results become REVOKED)."""
        ids: str | list[str] = task_id if isinstance(task_id, str) else list(task_id)
        arguments = {"task_id": ids, "terminate": terminate, "signal": signal}
        return self.broadcast("revoke", arguments, destination=destination, **kwargs)

    def terminate(
        self,
        task_id: str | Iterable[str],
        destination: Dest = None,
        signal: str = TERM_SIGNAME,
        **kwargs: Any,
    ) -> Replies | None:
        """``revoke(..., terminate=True)``: running ones are stopped too."""
        return self.revoke(task_id, destination=destination, terminate=True, signal=signal, **kwargs)

    def revoke_by_stamped_headers(
        self,
        headers: dict[str, Any] | list[str],
        destination: Dest = None,
        terminate: bool = False,
        signal: str = TERM_SIGNAME,
        **kwargs: Any,
    ) -> Replies | None:
        """Revoke every task whose stamps match ``headers`` (``{"stamp": value or [values]}``)."""
        arguments = {"headers": headers, "terminate": terminate, "signal": signal}
        return self.broadcast("revoke_by_stamped_headers", arguments, destination=destination, **kwargs)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Dest = None,
        **kwargs: Any,
    ) -> Replies | None:
        """Change a task's rate limit in running workers (``None`` or ``0`` lifts it)."""
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination=destination, **kwargs)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Dest = None,
        **kwargs: Any,
    ) -> Replies | None:
        """Set a task's soft and hard time limits (seconds) in running workers."""
        arguments = {"task_name": task_name, "hard": hard, "soft": soft}
        return self.broadcast("time_limit", arguments, destination=destination, **kwargs)

    def add_consumer(
        self,
        queue: str,
        exchange: str | None = None,
        exchange_type: str = "direct",
        routing_key: str | None = None,
        options: dict[str, Any] | None = None,
        destination: Dest = None,
        **kwargs: Any,
    ) -> Replies | None:
        """Make workers consume ``queue`` too (exchange and routing key default to its name)."""
        arguments = dict(queue=queue, exchange=exchange, exchange_type=exchange_type, routing_key=routing_key)
        arguments.update(options or {})
        return self.broadcast("add_consumer", arguments, destination=destination, **kwargs)

    def cancel_consumer(self, queue: str, destination: Dest = None, **kwargs: Any) -> Replies | None:
        return self.broadcast("cancel_consumer", {"queue": queue}, destination=destination, **kwargs)

    def enable_events(self, destination: Dest = None, **kwargs: Any) -> Replies | None:
        return self.broadcast("enable_events", {}, destination=destination, **kwargs)

    def disable_events(self, destination: Dest = None, **kwargs: Any) -> Replies | None:
        return self.broadcast("disable_events", {}, destination=destination, **kwargs)

    def heartbeat(self, destination: Dest = None, **kwargs: Any) -> Replies | None:
        """Ask workers to send a ``worker-heartbeat`` event now."""
        return self.broadcast("heartbeat", {}, destination=destination, **kwargs)

    def pool_grow(self, n: int = 1, destination: Dest = None, **kwargs: Any) -> Replies | None:
        return self.broadcast("pool_grow", {"n": n}, destination=destination, **kwargs)

    def pool_shrink(self, n: int = 1, destination: Dest = None, **kwargs: Any) -> Replies | None:
        return self.broadcast("pool_shrink", {"n": n}, destination=destination, **kwargs)

    def autoscale(self, max: int, min: int, destination: Dest = None, **kwargs: Any) -> Replies | None:  # noqa: A002
        """Change the ``--autoscale`` bounds of running workers."""
        return self.broadcast("autoscale", {"max": max, "min": min}, destination=destination, **kwargs)

    def pool_restart(
        self,
        modules: Sequence[str] | None = None,
        reload: bool = False,
        reloader: Any = None,
        destination: Dest = None,
        **kwargs: Any,
    ) -> Replies | None:
        arguments = {"modules": modules, "reload": reload, "reloader": reloader}
        return self.broadcast("pool_restart", arguments, destination=destination, **kwargs)

    def shutdown(self, destination: Dest = None, **kwargs: Any) -> Replies | None:
        """Warm shutdown: workers stop taking tasks, finish the running ones and exit."""
        return self.broadcast("shutdown", {}, destination=destination, **kwargs)

    def election(self, id: str, topic: str, action: Any = None, connection: Connection | None = None) -> None:  # noqa: A002
        self.broadcast("election", {"id": id, "topic": topic, "action": action}, connection=connection)

    def purge(self, connection: Connection | None = None) -> int:
        """Delete every waiting message of the app's queues; how many were removed."""
        queues = self.app.broker.queues.select()
        if connection is None:
            return self.app.broker.purge([q.name for q in queues])
        removed = 0
        channel = connection.default_channel
        for queue in queues:
            removed += queue(channel).purge() or 0
        return removed

    discard_all = purge
