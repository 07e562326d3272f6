"""Settings: old and new names, every way of loading a config, env overrides, typo warnings."""

from __future__ import annotations

import sys
import textwrap
import types
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import Celery
from taskq.config import Settings, UnknownSettingWarning
from taskq.exceptions import ImproperlyConfigured

ENV_VARS = (
    "TASKQ_BROKER_URL",
    "CELERY_BROKER_URL",
    "TASKQ_RESULT_BACKEND",
    "CELERY_RESULT_BACKEND",
    "TASKQ_BROKER_READ_URL",
    "CELERY_BROKER_READ_URL",
    "TASKQ_BROKER_WRITE_URL",
    "CELERY_BROKER_WRITE_URL",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's shell must not decide what these tests see."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleWriter]:
    writer = ModuleWriter(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield writer
    for name in writer.names:
        sys.modules.pop(name, None)


class ModuleWriter:
    """Writes uniquely named modules into a directory on sys.path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: list[str] = []

    def __call__(self, source: str, prefix: str = "cfg") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        self.names.append(name)
        return name


def new_app(**kwargs: object) -> Celery:
    return Celery("cfgtest", set_as_current=False, **kwargs)  # type: ignore[arg-type]


# -- old and new names --------------------------------------------------------------------
OLD_AND_NEW = [
    ("BROKER_URL", "broker_url", "redis://h:6379/0"),
    ("CELERY_RESULT_BACKEND", "result_backend", "redis://h:6379/1"),
    ("CELERY_TIMEZONE", "timezone", "Europe/Paris"),
    ("CELERY_IMPORTS", "imports", ("proj.a", "proj.b")),
    ("CELERY_TASK_SERIALIZER", "task_serializer", "pickle"),
    ("CELERYD_CONCURRENCY", "worker_concurrency", 7),
    ("CELERY_ALWAYS_EAGER", "task_always_eager", True),
    ("CELERY_TASK_RESULT_EXPIRES", "result_expires", 60),
    ("CELERYBEAT_SCHEDULE", "beat_schedule", {"every-10s": {"task": "t.x", "schedule": 10.0}}),
]


@pytest.mark.parametrize(("old", "new", "value"), OLD_AND_NEW)
def test_old_name_sets_the_new_setting(old: str, new: str, value: object) -> None:
    conf = Settings()
    conf[old] = value
    assert conf[new] == value
    assert getattr(conf, new) == value
    assert conf[old] == value
    assert conf.changes() == {new: value}


@pytest.mark.parametrize(("old", "new", "value"), OLD_AND_NEW)
def test_new_name_is_read_by_old_name(old: str, new: str, value: object) -> None:
    conf = Settings({new: value})
    assert conf[old] == value
    assert old in conf and new in conf


@pytest.mark.parametrize(("old", "new", "value"), OLD_AND_NEW)
def test_old_name_in_config_object(old: str, new: str, value: object) -> None:
    app = new_app()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownSettingWarning)
        app.config_from_object({old: value})
    assert app.conf[new] == value


def test_unset_setting_reads_its_default() -> None:
    conf = Settings()
    assert conf.task_serializer == "json"
    assert conf["CELERY_TASK_SERIALIZER"] == "json"
    assert conf.broker_url is None
    assert not conf.is_set("broker_url")
    with pytest.raises(AttributeError):
        _ = conf.no_such_setting_anywhere


# -- config_from_object ---------------------------------------------------------------------
def test_config_from_module_object() -> None:
    mod = types.ModuleType("celeryconfig_obj")
    mod.broker_url = "redis://m:6379/0"  # type: ignore[attr-defined]
    mod.CELERY_TASK_SERIALIZER = "pickle"  # type: ignore[attr-defined]
    app = new_app()
    app.config_from_object(mod)
    assert app.conf.broker_url == "redis://m:6379/0"
    assert app.conf.task_serializer == "pickle"


def test_config_from_class() -> None:
    class Config:
        broker_url = "redis://c:6379/0"
        worker_concurrency = 3
        _private = "ignored"

    app = new_app()
    app.config_from_object(Config)
    assert app.conf.broker_url == "redis://c:6379/0"
    assert app.conf.worker_concurrency == 3
    assert "_private" not in app.conf.changes()


def test_config_from_class_instance() -> None:
    class Config:
        result_backend = "redis://i:6379/1"

    app = new_app()
    app.config_from_object(Config())
    assert app.conf.result_backend == "redis://i:6379/1"


def test_config_from_dict() -> None:
    app = new_app()
    app.config_from_object({"broker_url": "memory://", "CELERYD_CONCURRENCY": 5})
    assert app.conf.broker_url == "memory://"
    assert app.conf.worker_concurrency == 5


def test_config_from_dotted_path(modules: ModuleWriter) -> None:
    name = modules(
        """
        broker_url = "redis://dotted:6379/0"
        task_default_queue = "dq"
        """
    )
    app = new_app()
    app.config_from_object(name)
    assert app.conf.broker_url == "redis://dotted:6379/0"
    assert app.conf.task_default_queue == "dq"


def test_config_from_dotted_path_to_attribute(modules: ModuleWriter) -> None:
    name = modules(
        """
        class Production:
            broker_url = "redis://prod:6379/0"

        class Staging:
            broker_url = "redis://staging:6379/0"
        """
    )
    app = new_app()
    app.config_from_object(f"{name}:Staging")
    assert app.conf.broker_url == "redis://staging:6379/0"
    other = new_app()
    other.config_from_object(f"{name}.Production")
    assert other.conf.broker_url == "redis://prod:6379/0"


def test_config_source_argument(modules: ModuleWriter) -> None:
    name = modules('broker_url = "redis://src:6379/0"\n')
    app = new_app(config_source=name)
    assert app.conf.broker_url == "redis://src:6379/0"


def test_config_from_missing_module() -> None:
    app = new_app()
    with pytest.raises(ImproperlyConfigured, match="no_such_config_module_xyz"):
        app.config_from_object("no_such_config_module_xyz")
    app.config_from_object("no_such_config_module_xyz", silent=True)
    assert app.conf.changes() == {}


def test_django_namespace(modules: ModuleWriter) -> None:
    name = modules(
        """
        DEBUG = True
        SECRET_KEY = "not-a-taskq-setting"
        INSTALLED_APPS = ["django.contrib.admin"]
        BROKER_URL = "redis://old-style-ignored:6379/0"
        CELERY_BROKER_URL = "redis://django:6379/0"
        CELERY_RESULT_BACKEND = "redis://django:6379/1"
        CELERY_TASK_ALWAYS_EAGER = True
        CELERY_WORKER_CONCURRENCY = 9
        """
    )
    app = new_app()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownSettingWarning)
        app.config_from_object(name, namespace="CELERY")
    assert app.conf.changes() == {
        "broker_url": "redis://django:6379/0",
        "result_backend": "redis://django:6379/1",
        "task_always_eager": True,
        "worker_concurrency": 9,
    }
    assert "debug" not in app.conf and "DEBUG" not in app.conf.changes()


def test_namespace_argument_of_app() -> None:
    app = new_app(config_source={"CELERY_BROKER_URL": "memory://", "OTHER": 1}, namespace="CELERY")
    assert app.conf.broker_url == "memory://"
    assert app.conf.changes() == {"broker_url": "memory://"}


# -- config_from_envvar ---------------------------------------------------------------------
def test_config_from_envvar(modules: ModuleWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    name = modules('broker_url = "redis://envvar:6379/0"\n')
    monkeypatch.setenv("MY_TASKQ_CONFIG", name)
    app = new_app()
    app.config_from_envvar("MY_TASKQ_CONFIG")
    assert app.conf.broker_url == "redis://envvar:6379/0"


def test_config_from_envvar_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_TASKQ_CONFIG_UNSET", raising=False)
    app = new_app()
    with pytest.raises(ImproperlyConfigured, match="MY_TASKQ_CONFIG_UNSET"):
        app.config_from_envvar("MY_TASKQ_CONFIG_UNSET")
    app.config_from_envvar("MY_TASKQ_CONFIG_UNSET", silent=True)
    assert app.conf.changes() == {}


def test_config_from_envvar_naming_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_TASKQ_CONFIG", "no_such_config_module_abc")
    app = new_app()
    with pytest.raises(ImproperlyConfigured):
        app.config_from_envvar("MY_TASKQ_CONFIG")
    app.config_from_envvar("MY_TASKQ_CONFIG", silent=True)


# -- conf as a mapping and an object --------------------------------------------------------
def test_conf_update_attribute_and_item_access() -> None:
    app = new_app()
    app.conf.update(task_serializer="pickle", CELERY_ACCEPT_CONTENT=["json", "pickle"])
    app.conf.update({"CELERYD_PREFETCH_MULTIPLIER": 2})
    app.conf.result_expires = 30
    app.conf["CELERY_DEFAULT_QUEUE"] = "old-style"
    assert app.conf.task_serializer == "pickle"
    assert app.conf["CELERY_TASK_SERIALIZER"] == "pickle"
    assert app.conf.accept_content == ["json", "pickle"]
    assert app.conf.worker_prefetch_multiplier == 2
    assert app.conf["CELERY_TASK_RESULT_EXPIRES"] == 30
    assert app.conf.task_default_queue == "old-style"
    assert app.conf["task_default_queue"] == "old-style"


def test_app_keyword_settings() -> None:
    app = new_app(broker="memory://", backend="cache+memory://", task_default_queue="kw", include=["a.b"])
    assert app.conf.broker_url == "memory://"
    assert app.conf.result_backend == "cache+memory://"
    assert app.conf.task_default_queue == "kw"
    assert list(app.conf.include) == ["a.b"]


def test_add_defaults_does_not_override() -> None:
    app = new_app(task_default_queue="mine")
    app.add_defaults({"task_default_queue": "theirs", "task_serializer": "pickle"})
    assert app.conf.task_default_queue == "mine"
    assert app.conf.task_serializer == "pickle"


# -- environment overrides ------------------------------------------------------------------
def test_celery_broker_url_env_beats_config(monkeypatch: pytest.MonkeyPatch) -> None:
    app = new_app(broker="redis://config:6379/0")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://celery-env:6379/0")
    assert app.conf.broker_url == "redis://celery-env:6379/0"
    assert app.conf["BROKER_URL"] == "redis://celery-env:6379/0"
    assert app.broker_url == "redis://celery-env:6379/0"


def test_taskq_broker_url_env_beats_celery_env(monkeypatch: pytest.MonkeyPatch) -> None:
    app = new_app(broker="redis://config:6379/0")
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://celery-env:6379/0")
    monkeypatch.setenv("TASKQ_BROKER_URL", "redis://taskq-env:6379/0")
    assert app.conf.broker_url == "redis://taskq-env:6379/0"


def test_result_backend_env_beats_config(monkeypatch: pytest.MonkeyPatch) -> None:
    app = new_app()
    app.config_from_object({"CELERY_RESULT_BACKEND": "redis://config:6379/1"})
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://env:6379/1")
    assert app.conf.result_backend == "redis://env:6379/1"
    assert app.result_backend_url == "redis://env:6379/1"


def test_env_override_makes_the_app_not_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    app = new_app()
    assert app.embedded
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://")
    assert not app.embedded
    assert app.conf.is_set("broker_url")


def test_empty_env_var_does_not_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "")
    app = new_app(broker="redis://config:6379/0")
    assert app.conf.broker_url == "redis://config:6379/0"


# -- unknown names --------------------------------------------------------------------------
def test_unknown_setting_warns_with_hint() -> None:
    conf = Settings()
    with pytest.warns(UnknownSettingWarning, match=r"task_serialiser.*did you mean 'task_serializer'"):
        conf["task_serialiser"] = "json"
    assert conf["task_serialiser"] == "json"  # kept: an app may read its own values


def test_unknown_setting_in_config_object_warns() -> None:
    app = new_app()
    with pytest.warns(UnknownSettingWarning, match=r"did you mean 'broker_url'"):
        app.config_from_object({"broker_ulr": "redis://typo:6379/0"})
    assert app.conf.broker_url is None


def test_unknown_setting_via_attribute_warns() -> None:
    app = new_app()
    with pytest.warns(UnknownSettingWarning, match="worker_concurency"):
        app.conf.worker_concurency = 4


def test_known_settings_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownSettingWarning)
        app = new_app(broker="memory://", task_default_queue="x", CELERY_ALWAYS_EAGER=True)
        app.conf.update(result_expires=10, CELERYD_CONCURRENCY=2, taskq_sqlite_path="/tmp/x.db")
    assert app.conf.task_always_eager is True


# -- helpers in a config module -------------------------------------------------------------
def test_helpers_in_config_module_are_not_settings(modules: ModuleWriter) -> None:
    helper_mod = modules("def compute():\n    return 1\n", prefix="helpers")
    name = modules(
        f"""
        import os
        import datetime as dt
        from datetime import timedelta
        from collections import OrderedDict
        from {helper_mod} import compute

        def queue_name(suffix):
            return "q-" + suffix

        class Local:
            pass

        broker_url = "memory://"
        task_default_queue = queue_name("a")
        result_expires = timedelta(hours=1)
        """
    )
    app = new_app()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownSettingWarning)
        app.config_from_object(name)
    assert app.conf.changes() == {
        "broker_url": "memory://",
        "task_default_queue": "q-a",
        "result_expires": __import__("datetime").timedelta(hours=1),
    }


def test_future_import_and_builtin_helpers_are_not_settings(modules: ModuleWriter) -> None:
    """``from __future__ import annotations`` and C functions (``from time import time``) are
    helpers too; today they land in conf as ``annotations``/``time`` with a bogus warning."""
    name = modules(
        """
        from __future__ import annotations
        from time import time
        from math import sqrt

        broker_url = "memory://"
        """
    )
    app = new_app()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownSettingWarning)
        app.config_from_object(name)
    assert app.conf.changes() == {"broker_url": "memory://"}


def test_function_given_as_a_setting_is_kept(modules: ModuleWriter) -> None:
    """``task_routes = route_task`` (a router function, as Celery allows) is a setting, not a
    helper: dropping it silently sends every task to the default queue."""
    name = modules(
        """
        def route_task(name, args, kwargs, options, task=None, **kw):
            return {"queue": "routed"}

        task_routes = route_task
        """
    )
    app = new_app()
    app.config_from_object(name)
    assert app.conf.task_routes is sys.modules[name].route_task


def test_values_of_a_mapping_are_all_settings() -> None:
    """A dict is explicit: a function or class in it is the value the user means."""

    def route_task(name: str, *args: object, **kwargs: object) -> str:
        return "routed"

    class Scheduler:
        pass

    app = new_app()
    app.config_from_object({"task_routes": route_task, "beat_scheduler": Scheduler})
    assert app.conf.task_routes is route_task
    assert app.conf.beat_scheduler is Scheduler
