"""The app half of ``taskq check-compat``: the settings, tasks and servers a loaded app uses.

Kept apart from the command (``check_compat.py``) and the source reader
(``check_compat_source.py``) so that each stays small; what is known about Celery's settings and
options lives in ``check_compat_table.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from taskq.check_compat_source import ERROR, INFO, WARNING, Finding
from taskq.check_compat_table import CELERY_DEFAULTS, DIFFERENT, IGNORED, TASK_OPTIONS, UNSUPPORTED, kind_of
from taskq.config import ENV_OVERRIDES, canonical_name

TESTED_BROKERS = {
    "redis": "Redis",
    "rediss": "Redis",
    "amqp": "RabbitMQ",
    "pyamqp": "RabbitMQ",
    "amqps": "RabbitMQ",
}
_MISSING = object()


def is_taskq_app(obj: Any) -> bool:
    from taskq.app import App

    return isinstance(obj, App)


# -- settings --------------------------------------------------------------------------------
def same_value(a: Any, b: Any) -> bool:
    def norm(v: Any) -> Any:
        if isinstance(v, timedelta):
            return v.total_seconds()
        return list(v) if isinstance(v, (tuple, list)) else v

    try:
        return bool(norm(a) == norm(b))
    except Exception:  # a value whose == raises is not a default
        return False


def explicit_settings(app: Any) -> dict[str, Any]:
    """Settings the app sets, by new-style name (for a Celery app: those off Celery's default)."""
    conf = app.conf
    if is_taskq_app(app):
        found = {canonical_name(k) or k: v for k, v in conf.changes().items()}
        found.update({name: conf[name] for name in ENV_OVERRIDES if conf.is_set(name)})
        return found
    app.tasks  # noqa: B018 - a finalized Celery app keeps what was set apart, in conf.changes
    changes = getattr(app.conf, "changes", None)
    if isinstance(changes, Mapping):
        found = {canonical_name(k) or k: v for k, v in changes.items() if k != "deprecated_settings"}
    else:  # not finalized: every setting off Celery's default
        found = {n: conf.get(n, d) for n, d in CELERY_DEFAULTS.items() if not same_value(conf.get(n, d), d)}
    for name in ("broker_url", "result_backend"):  # Celery's properties read the environment
        if getattr(conf, name, None):
            found[name] = getattr(conf, name)
    return found


def _shown(name: str, value: Any) -> str:
    from taskq.cli_info import censor

    text = repr(censor({name: value})[name])
    return text if len(text) <= 60 else text[:57] + "..."


def check_settings(explicit: Mapping[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    for name, value in sorted(explicit.items()):
        entry = kind_of(name)
        if entry is None:
            why = "not a Celery or taskq setting (a typo?): taskq keeps it in conf and does not use it"
            out.append(Finding(WARNING, "settings", name, why))
            continue
        kind, why = entry
        if kind == DIFFERENT:
            out.append(Finding(WARNING, "settings", name, f"behaves differently: {why}"))
        elif kind in (IGNORED, UNSUPPORTED) and not same_value(value, CELERY_DEFAULTS.get(name)):
            level, label = (ERROR, "not supported") if kind == UNSUPPORTED else (WARNING, "no effect")
            out.append(Finding(level, "settings", f"{name} = {_shown(name, value)}", f"{label}: {why}"))
    if "worker_prefetch_multiplier" not in explicit:
        why = "unset, taskq reserves 1 message per pool slot where Celery reserves 4 (fairer, more broker round trips); set it to 4 to keep Celery's"
        out.append(Finding(INFO, "settings", "worker_prefetch_multiplier", why))
    if explicit.get("beat_schedule") and "beat_schedule_filename" not in explicit:
        why = "taskq beat keeps its schedule in taskq-beat-schedule (JSON), not celerybeat-schedule: last-run times start afresh"
        out.append(Finding(INFO, "settings", "beat_schedule_filename", why))
    return out


# -- tasks -----------------------------------------------------------------------------------
def _library_class(cls: type) -> bool:
    module = cls.__module__
    return module == "builtins" or module.startswith(("taskq.", "celery.")) or module in ("taskq", "celery")


def _own_attribute(cls: type, name: str) -> Any:
    """A task attribute set by the app (decorator option or base class), not by the library."""
    for klass in cls.__mro__:
        if not _library_class(klass) and name in vars(klass):
            return vars(klass)[name]
    return _MISSING


def check_tasks(app: Any) -> tuple[list[str], list[Finding]]:
    names = sorted(n for n in app.tasks if not n.startswith("celery."))
    out: list[Finding] = []
    for name in names:
        cls = type(app.tasks[name])
        # Celery's Task.bind() copies settings onto each task class: those are not the app's options
        # (its decorator options are read from the source, and its settings are checked above).
        from_config = {attr for attr, _ in getattr(cls, "from_config", ())}
        for option, (kind, default, why) in TASK_OPTIONS.items():
            value = _MISSING if option in from_config else _own_attribute(cls, option)
            if value is not _MISSING and not same_value(value, default):
                level = ERROR if kind == UNSUPPORTED else WARNING
                label = "not supported" if kind == UNSUPPORTED else "no effect"
                out.append(
                    Finding(level, "tasks", f"{name}: {option}={_shown(option, value)}", f"{label}: {why}")
                )
    return names, out


# -- deployment ------------------------------------------------------------------------------
def check_deployment(app: Any, explicit: Mapping[str, Any]) -> list[Finding]:
    from kombu.transport import TRANSPORT_ALIASES

    from taskq.backend import BACKENDS
    from taskq.broker import mask_url

    out: list[Finding] = []
    broker = explicit.get("broker_url")
    if not broker:
        why = "not set: Celery would use amqp://guest@localhost//, taskq its embedded SQLite file; set it so every worker shares one broker"
        out.append(Finding(ERROR, "deployment", "broker_url", why))
    for url in str(broker or "").split(";") if broker else ():
        scheme = url.partition("://")[0].lower()
        if scheme in TESTED_BROKERS:
            why = f"{TESTED_BROKERS[scheme]}: tested with taskq and Celery workers side by side"
            out.append(Finding(INFO, "deployment", f"broker {mask_url(url)}", why))
        elif scheme in ("sqlite", "memory"):
            why = "taskq's own (sqlite) or in-process (memory) transport: Celery workers cannot share it"
            out.append(Finding(WARNING, "deployment", f"broker {mask_url(url)}", why))
        elif scheme in TRANSPORT_ALIASES:
            why = "a kombu transport taskq passes through but is not tested on: try it in staging first"
            out.append(Finding(WARNING, "deployment", f"broker {mask_url(url)}", why))
        else:
            out.append(Finding(ERROR, "deployment", f"broker {mask_url(url)}", "no such kombu transport"))
    backend = explicit.get("result_backend")
    scheme = str(backend).partition("://")[0].lower() if backend else ""
    if not backend:
        out.append(
            Finding(INFO, "deployment", "result_backend", "not set: results are disabled, as in Celery")
        )
    elif scheme in ("redis", "rediss", "redis+socket", "socket"):
        why = "Celery's keys and format: Celery and taskq clients read each other's results"
        out.append(Finding(INFO, "deployment", f"results {mask_url(str(backend))}", why))
    elif scheme == "rpc":
        why = "replies go to the client that sent the task, whichever worker ran it; no chords (as Celery)"
        out.append(Finding(INFO, "deployment", "results rpc://", why))
    elif scheme.startswith("db+") or scheme in ("db", "database"):
        why = "Celery's tables and rows: Celery and taskq clients read each other's results"
        out.append(Finding(INFO, "deployment", f"results {mask_url(str(backend))}", why))
    elif scheme not in BACKENDS:
        known = ", ".join(f"{s}://" for s in sorted(BACKENDS))
        why = f"this result backend is not provided by taskq (it has {known})"
        out.append(Finding(ERROR, "deployment", f"results {mask_url(str(backend))}", why))
    elif scheme != "disabled":
        why = "taskq's own or in-process store: Celery workers and clients cannot read it"
        out.append(Finding(WARNING, "deployment", f"results {mask_url(str(backend))}", why))
    out.extend(_value_checks(explicit))
    if is_taskq_app(app):
        from taskq import signals

        if signals.after_setup_task_logger.receivers_for(None):
            why = "connected, and never sent by taskq: configure task loggers in a setup_logging or after_setup_logger receiver"
            out.append(Finding(WARNING, "deployment", "after_setup_task_logger", why))
    return out


def _value_checks(explicit: Mapping[str, Any]) -> Iterable[Finding]:
    from taskq.beat import SCHEDULER_ALIASES, Scheduler, load_scheduler_class
    from taskq.worker.pools import POOL_NAMES

    scheduler = explicit.get("beat_scheduler")
    if scheduler and not isinstance(scheduler, type) and scheduler not in SCHEDULER_ALIASES:
        try:
            ok = issubclass(load_scheduler_class(scheduler), Scheduler)
        except Exception:
            ok = False
        if not ok:
            why = "not a taskq scheduler (third-party ones import Celery): subclass taskq.beat.Scheduler"
            yield Finding(ERROR, "deployment", f"beat_scheduler = {scheduler!r}", why)
    pool = explicit.get("worker_pool")
    if pool and pool not in POOL_NAMES:
        yield Finding(
            ERROR, "deployment", f"worker_pool = {pool!r}", f"taskq's pools are {', '.join(POOL_NAMES)}"
        )
    wanted: set[str] = set()
    for name in ("task_serializer", "result_serializer", "event_serializer"):
        wanted.add(str(explicit.get(name) or ""))
    for name in ("accept_content", "result_accept_content"):
        wanted.update(str(v) for v in explicit.get(name) or ())
    for item in sorted(wanted):
        if "auth" in item and importlib.util.find_spec("cryptography") is None:
            why = "message signing needs the cryptography package here: pip install 'taskq[auth]'"
            yield Finding(ERROR, "deployment", f"serializer {item!r}", why)
        for package, extra in (("msgpack", "msgpack"), ("yaml", "yaml")):
            if extra in item and importlib.util.find_spec(package) is None:
                why = f"needs the {package} package here: pip install 'taskq[{extra}]'"
                yield Finding(ERROR, "deployment", f"serializer {item!r}", why)
    zone = explicit.get("timezone")
    if zone and isinstance(zone, str):
        try:
            ZoneInfo(zone)
        except Exception:
            yield Finding(ERROR, "deployment", f"timezone = {zone!r}", "not an IANA time zone name")
