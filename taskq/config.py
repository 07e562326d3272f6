"""Settings: Celery's names, old and new, resolved to one table.

A ported Celery config may use the 5.x lower-case names, the 3.x/4.x upper-case names, or a
Django-style namespace (``CELERY_BROKER_URL``); all of them land on the same new-style key so
the rest of taskq reads exactly one name per setting. A name that matches no setting is kept
(apps read their own values from ``conf``) but warned about, because in practice it is a typo
that would otherwise silently do nothing.
"""

from __future__ import annotations
import __future__

import difflib
import importlib
import os
import warnings
from collections.abc import Iterator, Mapping, MutableMapping
from types import BuiltinFunctionType, FunctionType, ModuleType
from typing import Any

from taskq.defaults import CELERY_SETTINGS, TASKQ_SETTINGS
from taskq.exceptions import ImproperlyConfigured

DEFAULTS: dict[str, Any] = {name: default for name, (_, default) in CELERY_SETTINGS.items()}
DEFAULTS.update(TASKQ_SETTINGS)
OLD_TO_NEW: dict[str, str] = {old: new for new, (old, _) in CELERY_SETTINGS.items()}

# Environment variables win over the config, as in Celery; TASKQ_* first so a host running both
# can point taskq elsewhere.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "broker_url": ("TASKQ_BROKER_URL", "CELERY_BROKER_URL"),
    "broker_read_url": ("TASKQ_BROKER_READ_URL", "CELERY_BROKER_READ_URL"),
    "broker_write_url": ("TASKQ_BROKER_WRITE_URL", "CELERY_BROKER_WRITE_URL"),
    "result_backend": ("TASKQ_RESULT_BACKEND", "CELERY_RESULT_BACKEND"),
}


# What a config module imports or defines for its own use (``import os``, ``from __future__ import
# annotations``, ``from time import time``, helper functions and classes): not settings.
_HELPER_TYPES = (ModuleType, type, FunctionType, BuiltinFunctionType, __future__._Feature)


class UnknownSettingWarning(UserWarning):
    """A configured name matches no Celery or taskq setting."""


def canonical_name(key: str) -> str | None:
    """The new-style name for ``key``, or None when it is not a setting."""
    if key in DEFAULTS:
        return key
    if key in OLD_TO_NEW:
        return OLD_TO_NEW[key]
    lower = key.lower()
    if key.isupper() and lower in DEFAULTS:
        return lower
    return None


def _warn_unknown(key: str) -> None:
    close = difflib.get_close_matches(key.lower(), DEFAULTS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    warnings.warn(
        f"unknown setting {key!r}{hint}: taskq keeps it but does not use it",
        UnknownSettingWarning,
        stacklevel=4,
    )


class Settings(MutableMapping[str, Any]):
    """The app's configuration: explicit values over defaults, environment over both.

    Reading an unset setting gives its default; attribute access (``conf.broker_url``) and item
    access with any accepted spelling (``conf["BROKER_URL"]``) read the same value.
    """

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_values", {})
        if values:
            self.update(values)

    # -- mapping protocol -------------------------------------------------------------------
    def _key(self, key: str, *, warn: bool) -> str:
        name = canonical_name(key)
        if name is None:
            if warn:
                _warn_unknown(key)
            return key
        return name

    def __getitem__(self, key: str) -> Any:
        name = self._key(key, warn=False)
        for var in ENV_OVERRIDES.get(name, ()):
            if os.environ.get(var):
                return os.environ[var]
        if name in self._values:
            return self._values[name]
        if name in DEFAULTS:
            return DEFAULTS[name]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self._values[self._key(key, warn=True)] = value

    def __delitem__(self, key: str) -> None:
        del self._values[self._key(key, warn=False)]

    def __iter__(self) -> Iterator[str]:
        return iter({**DEFAULTS, **self._values})

    def __len__(self) -> int:
        return len({**DEFAULTS, **self._values})

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        name = self._key(key, warn=False)
        return name in DEFAULTS or name in self._values

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no setting named {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def is_set(self, key: str) -> bool:
        """True when the user (or the environment) gave a value, as opposed to the default."""
        name = self._key(key, warn=False)
        return name in self._values or any(os.environ.get(v) for v in ENV_OVERRIDES.get(name, ()))

    def changes(self) -> dict[str, Any]:
        """Only what was set explicitly: for reports and the worker banner."""
        return dict(self._values)

    def setdefault(self, key: str, default: Any = None) -> Any:
        name = self._key(key, warn=True)
        if name not in self._values:
            self._values[name] = default
        return self[name]

    def add_defaults(self, values: Mapping[str, Any]) -> None:
        """Fill settings the user left unset, as ``app.add_defaults`` does in Celery."""
        for key, value in values.items():
            name = self._key(key, warn=True)
            self._values.setdefault(name, value)

    def update_from(self, source: Any, namespace: str | None = None) -> None:
        """Take every setting found on a module, class, object or mapping."""
        for key, value in settings_in(source, namespace):
            self[key] = value


def settings_in(source: Any, namespace: str | None = None) -> Iterator[tuple[str, Any]]:
    """The (name, value) pairs a config source defines.

    Modules and classes hold helpers too (``from datetime import timedelta``), so only public
    attributes that are not modules, classes or functions count as settings. With a
    ``namespace`` (Django's ``CELERY``), only ``CELERY_*`` keys are read and the prefix is
    dropped: ``CELERY_BROKER_URL`` is ``broker_url``.
    """
    is_mapping = isinstance(source, Mapping)
    if is_mapping:
        items = list(source.items())
    else:
        items = [(k, getattr(source, k)) for k in dir(source) if not k.startswith("_")]
    prefix = f"{namespace}_" if namespace else ""
    for key, value in items:
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix) :].lower()
        # A mapping says exactly what it means; on a module or class, an imported or defined
        # helper is skipped unless it is a function assigned to a setting (task_routes = router).
        if (
            not is_mapping
            and isinstance(value, _HELPER_TYPES)
            and not (isinstance(value, FunctionType) and canonical_name(key) is not None)
        ):
            continue
        yield key, value


def import_object(path: str) -> Any:
    """Import ``pkg.module`` or ``pkg.module:attr`` (``pkg.module.attr`` is tried too)."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError as exc:
        module_name, _, attr = path.rpartition(".")
        if not module_name or exc.name != path:
            raise
        return getattr(importlib.import_module(module_name), attr)


def load_config_source(source: Any, silent: bool = False) -> Any:
    """Resolve what ``config_from_object`` was given into an object to read settings from."""
    if not isinstance(source, str):
        return source
    try:
        return import_object(source)
    except (ImportError, AttributeError) as exc:
        if silent:
            return None
        raise ImproperlyConfigured(f"cannot load configuration {source!r}: {exc}") from exc
