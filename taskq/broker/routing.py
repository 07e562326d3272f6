"""Where a task message goes: queues from config, ``task_routes``, and Celery's publish rule.

Celery publishes to a direct queue through the anonymous exchange with the queue name as
routing key (after declaring and binding the queue to its named exchange). Keeping that rule
means a Celery worker and a taskq worker see the same lists and bindings on every transport.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from kombu import Exchange, Queue

from taskq.config import Settings, import_object
from taskq.exceptions import QueueNotFound

RouterFn = Callable[..., Any]


@dataclass
class Destination:
    """Arguments for kombu's ``Producer.publish``, decided once per message."""

    exchange: str
    routing_key: str
    declare: list[Queue]
    delivery_mode: int | None


def _queue_arguments(conf: Settings, queue_type: str | None = None) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if conf.task_queue_max_priority is not None:
        args["x-max-priority"] = conf.task_queue_max_priority
    if (queue_type or conf.task_default_queue_type) == "quorum":
        args["x-queue-type"] = "quorum"
    return args


def _queues_from_setting(value: Any) -> list[Queue]:
    """``task_queues``: a list of ``kombu.Queue`` or the old dict ``{name: {options}}``."""
    if not value:
        return []
    if isinstance(value, Mapping):
        out = []
        for name, opts in value.items():
            opts = dict(opts or {})
            exchange = opts.pop("exchange", name)
            exchange_type = opts.pop("exchange_type", "direct")
            if not isinstance(exchange, Exchange):
                exchange = Exchange(exchange, exchange_type)
            routing_key = opts.pop("routing_key", opts.pop("binding_key", name))
            out.append(Queue(name, exchange, routing_key, **opts))
        return out
    return [q if isinstance(q, Queue) else Queue(q, Exchange(q), q) for q in value]


class Queues:
    """The queues an app knows, plus the ones created on demand."""

    def __init__(self, conf: Settings) -> None:
        self.conf = conf
        self._queues: dict[str, Queue] = {}
        for queue in _queues_from_setting(conf.task_queues):
            self.add(queue)
        self.default_name: str = conf.task_default_queue
        self._queues.setdefault(self.default_name, self._default_queue())

    def _default_queue(self) -> Queue:
        name = self.default_name
        exchange = Exchange(self.conf.task_default_exchange or name, self.conf.task_default_exchange_type)
        return Queue(
            name,
            exchange,
            self.conf.task_default_routing_key or name,
            queue_arguments=_queue_arguments(self.conf) or None,
        )

    def __getitem__(self, name: str) -> Queue:
        try:
            return self._queues[name]
        except KeyError:
            if not self.conf.task_create_missing_queues:
                raise QueueNotFound(
                    f"queue {name!r} is not in task_queues and task_create_missing_queues is off"
                ) from None
            exchange_type = self.conf.task_create_missing_queue_exchange_type or "direct"
            queue_type = self.conf.task_create_missing_queue_type
            queue = Queue(
                name,
                Exchange(name, exchange_type),
                name,
                queue_arguments=_queue_arguments(self.conf, queue_type) or None,
            )
            self._queues[name] = queue
            return queue

    def __contains__(self, name: object) -> bool:
        return name in self._queues

    @property
    def default(self) -> Queue:
        return self[self.default_name]

    def select(self, include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[Queue]:
        """The queues a worker consumes: ``-Q`` names (created if missing) minus ``-X``."""
        names = list(include) or list(self._queues)
        skip = set(exclude)
        return [self[n] for n in names if n not in skip]

    def add(self, queue: Queue) -> Queue:
        """Celery's ``Queues.__setitem__``: a queue without ``x-max-priority`` gets the setting's."""
        if self.conf.task_queue_max_priority is not None:
            arguments = dict(getattr(queue, "queue_arguments", None) or {})
            arguments.setdefault("x-max-priority", self.conf.task_queue_max_priority)
            queue.queue_arguments = arguments  # type: ignore[attr-defined]
        self._queues[queue.name] = queue
        return queue


def _glob_match(pattern: str, name: str) -> bool:
    return fnmatchcase(name, pattern)


def _regex_match(pattern: re.Pattern[str], name: str) -> bool:
    return pattern.match(name) is not None


def _compile_map(table: Mapping[Any, Any]) -> RouterFn:
    """A ``{name|glob|regex: route}`` table as a router function (exact names first)."""
    exact: dict[str, Any] = {}
    patterns: list[tuple[Callable[[str], bool], Any]] = []
    for key, value in table.items():
        if isinstance(key, re.Pattern):
            patterns.append((functools.partial(_regex_match, key), value))
        elif isinstance(key, str) and any(c in key for c in "*?["):
            patterns.append((functools.partial(_glob_match, key), value))
        else:
            exact[key] = value

    def route(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in exact:
            return exact[name]
        for match, found in patterns:
            if match(name):
                return found
        return None

    return route


def routers_from_setting(value: Any) -> list[RouterFn]:
    """``task_routes`` in any of Celery's shapes: dict, router, dotted path, or a list of them."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[RouterFn] = []
    for item in items:
        if isinstance(item, str):
            item = import_object(item)
        if isinstance(item, Mapping):
            out.append(_compile_map(item))
        elif callable(item):
            out.append(item)
        else:
            raise TypeError(f"task_routes entry {item!r} is not a dict, router or import path")
    return out


class Router:
    """Turns a task name and call options into a publish destination."""

    def __init__(self, conf: Settings, queues: Queues) -> None:
        self.conf = conf
        self.queues = queues
        self.routers = routers_from_setting(conf.task_routes)

    def route_options(
        self,
        name: str,
        args: Any,
        kwargs: Any,
        options: Mapping[str, Any],
        task: Any = None,
    ) -> dict[str, Any]:
        """Routing options for one call: the first router that answers, under call options."""
        for router in self.routers:
            try:
                found = router(name, args, kwargs, options, task=task)
            except TypeError:
                found = router(name, args, kwargs, options)
            if found:
                found = {"queue": found} if isinstance(found, str) else dict(found)
                return {**found, **{k: v for k, v in options.items() if v is not None}}
        return dict(options)

    def destination(self, options: Mapping[str, Any]) -> Destination:
        """Celery's rule: direct queues go through the anonymous exchange, keyed by name."""
        queue: Queue | None = options.get("queue")
        exchange = options.get("exchange")
        routing_key = options.get("routing_key")
        if isinstance(exchange, Exchange):
            exchange = exchange.name
        if queue is None and exchange is None:
            queue = self.queues.default
        if isinstance(queue, str):
            queue = self.queues[queue]
        exchange_type = queue.exchange.type if queue is not None and queue.exchange else "direct"
        delivery_mode = queue.exchange.delivery_mode if queue is not None and queue.exchange else None
        if (not exchange or not routing_key) and exchange_type == "direct" and queue is not None:
            return Destination("", queue.name, [queue], delivery_mode)
        if exchange is None and queue is not None:
            exchange = queue.exchange.name or self.conf.task_default_exchange or ""
            routing_key = routing_key or queue.routing_key or self.conf.task_default_routing_key
        declare = [queue] if queue is not None else []
        return Destination(exchange or "", routing_key or "", declare, delivery_mode)
