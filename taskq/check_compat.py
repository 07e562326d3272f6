"""``taskq check-compat -A proj``: what an app uses that taskq ignores, treats differently or lacks.

A team should learn this before it deploys, not from a worker that silently skips a setting, so
the check reads the app the way a worker would (settings, registered tasks) plus its source
files (imports, task options, Celery-only methods), and names the broker and result backend it
would use. It works on the app before the port too: ``-A`` may name a Celery app, and then each
``from celery ...`` import is listed with its taskq replacement. Nothing connects to a server.

Exit code 1 when something unsupported is used (an ``error``), else 0; ``--json`` for scripts.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from taskq.check_compat_app import (
    check_deployment,
    check_settings,
    check_tasks,
    explicit_settings,
    is_taskq_app,
)
from taskq.check_compat_source import ERROR, INFO, WARNING, Finding, module_files, python_files, scan_files

if TYPE_CHECKING:
    from taskq.cli import Settings

__all__ = ["Finding", "Report", "check", "check_compat", "load_app"]

AREAS = ("app", "settings", "tasks", "imports", "source", "deployment")


@dataclass
class Report:
    """Everything one check found, in the order it is printed."""

    app: str
    implementation: str  # "taskq", "celery", or "" when the app did not load
    tasks: list[str]
    files: list[str]
    findings: list[Finding]

    @property
    def blocking(self) -> bool:
        return any(f.level == ERROR for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {level: sum(f.level == level for f in self.findings) for level in (ERROR, WARNING, INFO)}

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "implementation": self.implementation,
            "blocking": self.blocking,
            "counts": self.counts(),
            "tasks": self.tasks,
            "files": self.files,
            "findings": [asdict(f) for f in self.findings],
        }

    def text(self) -> str:
        loaded = f"{self.implementation} app" if self.implementation else "app not loaded"
        lines = [
            f"check-compat {self.app} ({loaded}): {len(self.tasks)} tasks, {len(self.files)} source files"
        ]
        for area in AREAS:
            found = [f for f in self.findings if f.area == area]
            if found:
                lines.append(f"\n{area}:")
                lines.extend(f"  {f.level:<8} {f.subject}: {f.message}" for f in found)
        n = self.counts()
        tally = ", ".join(
            f"{n[level]} {word if n[level] == 1 else word + 's'}"
            for level, word in ((ERROR, "error"), (WARNING, "warning"), (INFO, "note"))
        )
        verdict = "blocks the port" if self.blocking else "nothing blocks"
        lines.append(f"\n{verdict}: {tally}")
        return "\n".join(lines)


# -- loading ---------------------------------------------------------------------------------
def is_app(obj: Any) -> bool:
    """A taskq app, or a Celery one (by class, so no lazy attribute of a proxy is evaluated)."""
    return is_taskq_app(obj) or any(
        c.__module__ == "celery.app.base" and c.__name__ == "Celery" for c in type(obj).__mro__
    )


def load_app(name: str) -> Any:
    """The app ``-A`` names, found in Celery's order; a Celery app is accepted too."""
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name or "." not in module_name or attr:
            raise
        module_name, _, attr = module_name.rpartition(".")
        module = importlib.import_module(module_name)
    if attr:
        found = getattr(module, attr)
        found = found if is_app(found) or not callable(found) else found()
        if is_app(found):
            return found
        raise LookupError(f"{module_name}:{attr} is not a taskq or Celery app")
    candidates = [getattr(module, "app", None), getattr(module, "celery", None)]
    if hasattr(module, "__path__"):
        try:
            sub = importlib.import_module(f"{module_name}.celery")
        except ModuleNotFoundError as exc:
            if exc.name != f"{module_name}.celery":
                raise
        else:
            candidates += [getattr(sub, "app", None), getattr(sub, "celery", None)]
    for candidate in [*candidates, *vars(module).values()]:
        if is_app(candidate):
            return candidate
    raise LookupError(f"module {module_name!r} has no taskq or Celery app (looked for 'app' and 'celery')")


def import_tasks(app: Any) -> None:
    """Import ``imports``/``include`` as a worker would, so every task is registered."""
    if is_taskq_app(app):
        app.import_modules()
    else:
        app.loader.import_default_modules()


# -- the whole check -------------------------------------------------------------------------
def source_roots(name: str, app: Any) -> list[Path]:
    """The package that holds the app, and the modules of imports/include outside it."""
    roots: list[Path] = []
    top = name.partition(":")[0].partition(".")[0]
    modules = [top]
    if app is not None:
        modules += [str(m) for m in (*app.conf.get("imports", ()), *app.conf.get("include", ()))]
    for module in modules:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            roots.extend(Path(p) for p in spec.submodule_search_locations)
        elif spec.origin and spec.origin.endswith(".py"):
            roots.append(Path(spec.origin))
    return roots


def check(
    name: str,
    sources: Iterable[str] = (),
    overrides: Mapping[str, str] | None = None,
    config: str | None = None,
) -> Report:
    """Load the app ``name`` (``-A``), read its source, and report; nothing is sent anywhere."""
    findings: list[Finding] = []
    app: Any = None
    with warnings.catch_warnings():  # unknown settings are reported below, not printed
        warnings.simplefilter("ignore")
        try:
            app = load_app(name)
            if config:
                app.config_from_object(config)
            for key, value in (overrides or {}).items():
                app.conf[key] = value
            import_tasks(app)
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}" + (
                " (a task option taskq refuses?)" if isinstance(exc, TypeError) else ""
            )
            findings.append(Finding(ERROR, "app", f"cannot load {name}", why))
    tasks: list[str] = []
    if app is not None:
        try:  # a Celery app validates its configuration only now, when it is finalized
            explicit = explicit_settings(app)
            findings += check_settings(explicit)
            tasks, found = check_tasks(app)
            findings += found
            findings += check_deployment(app, explicit)
        except Exception as exc:
            findings.append(Finding(ERROR, "app", f"cannot read {name}", f"{type(exc).__name__}: {exc}"))
    files = python_files([*source_roots(name, app), *(Path(s) for s in sources)])
    names_of: dict[Path, set[str]] = {}
    for module in list(sys.modules.values()):
        path = module_files(module)
        if app is not None and path in files:
            names_of[path] = {k for k, v in vars(module).items() if v is app}
    findings += scan_files(files, names_of, Path.cwd())
    findings.sort(key=lambda f: AREAS.index(f.area))
    implementation = "" if app is None else ("taskq" if is_taskq_app(app) else "celery")
    base = Path.cwd()
    labels = [str(p.relative_to(base)) if p.is_relative_to(base) else str(p) for p in files]
    return Report(name, implementation, tasks, labels, findings)


@click.command(name="check-compat")
@click.option("-j", "--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Path(exists=True),
    help="More files or directories to read (e.g. tests/); the app's package is always read.",
)
@click.pass_obj
def check_compat(settings: Settings, as_json: bool, sources: tuple[str, ...]) -> None:
    """Report what the app uses that taskq does not support or treats differently (exit 1: blocked)."""
    if not settings.app_name:
        raise click.UsageError("check-compat needs the app: taskq -A proj check-compat")
    overrides = {"broker_url": settings.broker, "result_backend": settings.backend}
    report = check(settings.app_name, sources, {k: v for k, v in overrides.items() if v}, settings.config)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.text())
    click.get_current_context().exit(1 if report.blocking else 0)
