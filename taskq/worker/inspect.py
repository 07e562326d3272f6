"""Remote control, worker side: the inspect commands (answers about this worker, no side effects).

Like every pidbox command they run in the consume loop's thread, between two messages, so they
read the consumer's state (``active``, ``ready``, ``eta_heap``, ...) without locks. The reply
shapes are Celery's (``celery.worker.control``) because ``celery inspect`` and Flower parse them.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import pprint
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import kombu
from kombu import Connection
from kombu.abstract import Object as KombuObject
from kombu.utils.url import maybe_sanitize_url

from taskq import __version__
from taskq.broker import transport_name
from taskq.control import app_clock
from taskq.saferepr import saferepr

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.worker.consumer import Consumer
    from taskq.worker.request import Request

logger = logging.getLogger("taskq.worker")

DEFAULT_TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")
ETA_PRIORITY = 6  # the priority Celery's timer gives ETA entries; ``scheduled`` reports it
# Celery's rule for settings shown to remote clients (celery.app.utils.HIDDEN_SETTINGS).
HIDDEN_SETTINGS = re.compile("API|TOKEN|KEY|SECRET|PASS|PROFANITIES_LIST|SIGNATURE|DATABASE|BEAT_DBURI", re.I)
MASK = "*" * 8
BROKER_URL_KEYS = ("broker_url", "broker_read_url", "broker_write_url")
RUSAGE_FIELDS: tuple[str, ...] = ("utime", "stime", "maxrss", "ixrss", "idrss", "isrss", "minflt", "majflt")
RUSAGE_FIELDS += ("nswap", "inblock", "oublock", "msgsnd", "msgrcv", "nsignals", "nvcsw", "nivcsw")
# monotonic -> wall clock, fixed once so a task's start reads the same in every reply
_WALL_OFFSET = time.time() - time.monotonic()
_mem_samples: deque[str | None] = deque(maxlen=1000)


def ok(value: Any) -> dict[str, Any]:
    return {"ok": value}


def nok(value: Any) -> dict[str, Any]:
    return {"error": value}


# -- the requests this worker holds -------------------------------------------------------------
def reserved_requests(consumer: Consumer) -> list[Request]:
    """Received and due, not started: the ready queue, then those waiting for a rate-limit token."""
    waiting: Mapping[str, Iterable[Request]] = getattr(consumer.rate_limits, "_waiting", {})
    return [*consumer.ready, *(r for queue in waiting.values() for r in queue)]


def scheduled_requests(consumer: Consumer) -> list[Request]:
    """Held until their ETA, soonest first."""
    return [request for _, _, request in sorted(consumer.eta_heap, key=lambda e: (e[0], e[1]))]


def request_info(request: Request, safe: bool = False) -> dict[str, Any]:
    """Celery's ``Request.info()``: what inspect active/reserved/scheduled/query_task list."""
    req, job = request.req, request.job
    started = job.started_at if job is not None else None
    pid = None
    if started is not None:  # the child's pid under prefork; in-process pools run here
        pid = job.pid if job is not None and job.pid is not None else os.getpid()
    delivery = req.delivery_info
    return {
        "id": req.id,
        "name": req.name,
        "args": (req.argsrepr or saferepr(req.args)) if safe else req.args,
        "kwargs": (req.kwargsrepr or saferepr(req.kwargs)) if safe else req.kwargs,
        "type": req.name,
        "hostname": request.hostname,
        # wall-clock seconds, as Celery 5.7 (the pools keep monotonic times)
        "time_start": None if started is None else started + _WALL_OFFSET,
        "acknowledged": request.acked,
        "delivery_info": {
            "exchange": delivery.get("exchange"),
            "routing_key": delivery.get("routing_key"),
            "priority": req.properties.get("priority"),
            "redelivered": bool(delivery.get("redelivered", False)),
        },
        "worker_pid": pid,
    }


# -- JSON-safe values ---------------------------------------------------------------------------
def jsonable(obj: Any, keyfilter: Callable[[Any], bool] | None = None) -> Any:
    """Celery's ``jsonify``: kombu entities as dicts, dates as ISO text, unknown types as repr."""
    if isinstance(obj, KombuObject):
        obj = obj.as_dict(recurse=True)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, keyfilter) for v in obj]
    if isinstance(obj, Mapping):
        return {k: jsonable(v, keyfilter) for k, v in obj.items() if keyfilter is None or keyfilter(k)}
    if isinstance(obj, (datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, datetime.timedelta):
        return str(obj)
    return saferepr(obj)


def _wanted_key(key: Any) -> bool:
    return isinstance(key, str) and not key.startswith("__")


def filter_hidden(conf: Mapping[Any, Any]) -> dict[Any, Any]:
    """Secrets masked as Celery masks them: by key name, and passwords inside URLs."""

    def censor(key: Any, value: Any) -> Any:
        if isinstance(value, Mapping):
            return filter_hidden(value)
        if isinstance(key, str):
            if HIDDEN_SETTINGS.search(key):
                return MASK
            if isinstance(value, str) and key.lower() in BROKER_URL_KEYS:
                try:
                    return Connection(value).as_uri(mask=MASK)  # Celery's form: ':********@'
                except Exception:  # a URL kombu cannot parse still must not leak
                    return maybe_sanitize_url(value, mask=MASK)
            if isinstance(value, str) and "backend" in key.lower():
                return maybe_sanitize_url(value, mask=MASK)
        return value

    return {k: censor(k, v) for k, v in conf.items()}


def settings_table(app: App, with_defaults: bool = False) -> dict[str, Any]:
    """What the user configured (everything with ``with_defaults``), secrets masked."""
    values = {k: app.conf[k] for k in app.conf} if with_defaults else app.conf.changes()
    return filter_hidden({k: v for k, v in values.items() if not (isinstance(k, str) and k.startswith("_"))})


# -- commands -----------------------------------------------------------------------------------
def ping(consumer: Consumer, **kwargs: Any) -> dict[str, str]:
    return ok("pong")


def clock(consumer: Consumer, **kwargs: Any) -> dict[str, int]:
    return {"clock": app_clock(consumer.app).value}


def active(consumer: Consumer, safe: bool | None = False, **kwargs: Any) -> list[dict[str, Any]]:
    return [request_info(r, safe=bool(safe)) for r in consumer.active]


def reserved(consumer: Consumer, **kwargs: Any) -> list[dict[str, Any]]:
    return [request_info(r) for r in reserved_requests(consumer)]


def scheduled(consumer: Consumer, **kwargs: Any) -> list[dict[str, Any]]:
    return [
        {
            "eta": r.eta.isoformat() if r.eta else None,
            "priority": ETA_PRIORITY,
            "request": request_info(r),
        }
        for r in scheduled_requests(consumer)
    ]


def revoked(consumer: Consumer, **kwargs: Any) -> list[str]:
    return live_revoked(consumer)


def live_revoked(consumer: Consumer) -> list[str]:
    """Revoked ids still remembered, oldest first (expired ones are dropped on the way)."""
    ids = consumer.revoked
    return [tid for tid in ids if tid in ids]


def registered(
    consumer: Consumer, taskinfoitems: Iterable[str] | None = None, builtins: bool = False, **kwargs: Any
) -> list[str]:
    """Task names, each with the listed attributes that are set: ``name [rate_limit=10/s]``."""
    tasks = consumer.app.tasks
    items = [
        i for i in (taskinfoitems or DEFAULT_TASK_INFO_ITEMS) if isinstance(i, str) and not i.startswith("_")
    ]

    def describe(name: str) -> str:
        task = tasks[name]
        fields = {item: getattr(task, item, None) for item in items}
        shown = " ".join(f"{item}={value}" for item, value in fields.items() if value is not None)
        return f"{name} [{shown}]" if shown else name

    return [describe(n) for n in sorted(tasks) if builtins or not n.startswith("celery.")]


def query_task(consumer: Consumer, ids: str | Iterable[str] = (), **kwargs: Any) -> dict[str, Any]:
    """``{id: [state, info]}`` for the ids this worker holds; others are left out."""
    wanted = {ids} if isinstance(ids, str) else set(ids or ())
    found: dict[str, Any] = {}
    groups = (
        ("active", consumer.active),
        ("reserved", reserved_requests(consumer)),
        ("scheduled", scheduled_requests(consumer)),
    )
    for state, requests in groups:
        for request in requests:
            if request.id in wanted and request.id not in found:
                found[request.id] = [state, request_info(request)]
    return found


def active_queues(consumer: Consumer, **kwargs: Any) -> list[Any]:
    return [jsonable(q) for q in consumer.queues]


def conf(consumer: Consumer, with_defaults: bool = False, **kwargs: Any) -> Any:
    return jsonable(settings_table(consumer.app, bool(with_defaults)), keyfilter=_wanted_key)


def stats(consumer: Consumer, **kwargs: Any) -> Any:
    """Celery's worker statistics, under Celery's keys, as far as taskq has the numbers."""
    info: dict[str, Any] = {
        "total": dict(consumer.total),
        "pid": os.getpid(),
        "clock": str(app_clock(consumer.app).value),
        "uptime": round(time.time() - consumer.started_at),
        "pool": pool_info(consumer),
    }
    scaler = consumer.autoscaler
    if scaler is not None:
        info["autoscaler"] = {
            "max": scaler.max_size,
            "min": scaler.min_size,
            "current": consumer.pool.limit,
            "qty": len(consumer.ready) + len(consumer.active),
        }
    info["broker"] = broker_info(consumer.connection)
    info["prefetch_count"] = consumer.prefetch_count + consumer._qos_extra if consumer.prefetch_count else 0
    info["rusage"] = rusage()
    return jsonable(info)


def pool_info(consumer: Consumer) -> dict[str, Any]:
    pool, conf = consumer.pool, consumer.app.conf
    child_pids: Callable[[], list[int]] | None = getattr(pool, "child_pids", None)
    info: dict[str, Any] = {
        "implementation": f"{type(pool).__module__}:{type(pool).__name__}",
        "max-concurrency": pool.limit,
        "processes": child_pids() if child_pids is not None else [os.getpid()],
        "max-tasks-per-child": getattr(pool, "max_tasks_per_child", None) or ("N/A" if child_pids else None),
        # the consumer never hands a pool more jobs than it has free slots
        "put-guarded-by-semaphore": True,
        "timeouts": [conf.task_soft_time_limit or 0, conf.task_time_limit or 0],
    }
    if child_pids is not None:
        info["writes"] = "N/A"  # billiard's write statistics belong to Celery's own async pool
    return info


def broker_info(connection: Connection | None) -> Any:
    if connection is None:
        return "N/A"
    params: dict[str, Any] = dict(connection.info())
    params["transport"] = transport_name(connection)
    params.pop("password", None)  # never sent, as in Celery
    # transport options hold secrets too (sentinel or SSL passwords): masked as conf masks them
    params["transport_options"] = filter_hidden(params.get("transport_options") or {})
    alternates = params.get("alternates")
    if isinstance(alternates, str):
        params["alternates"] = maybe_sanitize_url(alternates)
    elif isinstance(alternates, (list, tuple)):
        params["alternates"] = [maybe_sanitize_url(u) if isinstance(u, str) else u for u in alternates]
    return params


def rusage() -> Any:
    try:
        import resource
    except ImportError:  # not on Windows
        return "N/A"
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {name: getattr(usage, f"ru_{name}") for name in RUSAGE_FIELDS}


def report(consumer: Consumer, **kwargs: Any) -> dict[str, str]:
    return ok(bugreport(consumer.app, consumer.connection))


def bugreport(app: App, connection: Connection | None = None) -> str:
    """Celery's bug-report text with taskq's versions; settings masked as ``conf`` masks them."""
    import billiard

    transport = driver = ""
    if connection is not None:
        try:
            transport = transport_name(connection)
            driver = f"{connection.transport.driver_name}:{connection.transport.driver_version()}"
        except Exception:  # a report must come even when the transport cannot say
            pass
    results = maybe_sanitize_url(app.conf.result_backend or "disabled", mask=MASK)
    settings = "\n".join(f"{k}: {pprint.pformat(v, width=50)}" for k, v in settings_table(app).items())
    return (
        f"software -> taskq:{__version__} kombu:{kombu.__version__} py:{platform.python_version()}\n"
        f"            billiard:{billiard.__version__} {driver}\n"
        f"platform -> system:{platform.system()} arch:{', '.join(a for a in platform.architecture() if a)}\n"
        f"            kernel version:{platform.release()} imp:{platform.python_implementation()}\n"
        f"loader   -> {type(app).__module__}.{type(app).__name__}\n"
        f"settings -> transport:{transport} results:{results}\n\n{settings}\n"
    )


def memsample(consumer: Consumer, **kwargs: Any) -> str | None:
    """Resident memory now, as text (``'52.3MB'``); kept for ``memdump``. None if unknown here."""
    sample = _rss()
    _mem_samples.append(sample)
    return sample


def memdump(consumer: Consumer, samples: int = 10, **kwargs: Any) -> str:
    taken = [s for s in _mem_samples if s]
    _mem_samples.clear()
    now = _rss()
    if now is None:
        return "- rss: (not available on this platform).\n"
    shown = taken[-int(samples) :] if samples else []
    if not shown:
        return f"- rss: {now}.\n"
    return "".join(["- rss (sample):\n", *(f"-    > {s},\n" for s in shown), f"- rss (end): {now}.\n"])


def _rss() -> str | None:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return _humanbytes(pages * os.sysconf("SC_PAGE_SIZE"))


def _humanbytes(n: float) -> str:
    for div, unit in ((2**40, "TB"), (2**30, "GB"), (2**20, "MB"), (2**10, "KB")):
        if n >= div:
            return f"{n / div:.1f}".rstrip("0").rstrip(".") + unit
    return f"{int(n)}b"


def hello(consumer: Consumer, from_node: str, revoked: Any = None, **kwargs: Any) -> dict[str, Any] | None:
    """Mingle, as a starting Celery worker asks it: merge its revoked ids, answer with ours."""
    if from_node == consumer.hostname:
        return None
    logger.info("sync with %s", from_node)
    ids = list(revoked) if isinstance(revoked, (list, tuple, Mapping)) else []  # <= 5.6 sent a dict
    for task_id in ids:
        if isinstance(task_id, str):
            consumer.revoked.add(task_id)
    if ids:
        consumer.revoked.changed()
    return {"revoked": live_revoked(consumer), "clock": app_clock(consumer.app).forward()}


INSPECT_HANDLERS: dict[str, Callable[..., Any]] = {
    "ping": ping,
    "clock": clock,
    "active": active,
    "reserved": reserved,
    "scheduled": scheduled,
    "revoked": revoked,
    "registered": registered,
    "query_task": query_task,
    "active_queues": active_queues,
    "conf": conf,
    "stats": stats,
    "report": report,
    "memsample": memsample,
    "memdump": memdump,
    "hello": hello,
    # Celery's older aliases, still accepted by its workers
    "dump_active": active,
    "dump_reserved": reserved,
    "dump_schedule": scheduled,
    "dump_revoked": revoked,
    "dump_tasks": registered,
    "dump_conf": conf,
}
