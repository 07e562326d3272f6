"""The source half of ``taskq check-compat``: read a project's files without running them.

Imports, task decorator options and calls to Celery-only methods are found in the syntax tree,
so they are reported even when the app cannot be imported (a Celery 5.7 task option is a
``TypeError`` at import in taskq), and before anything is deployed.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from taskq.check_compat_table import (
    APP_ATTRIBUTES,
    EXTENSIONS,
    IMPORT_MODULES,
    IMPORT_NAMES,
    IMPORT_WARNINGS,
    TASK_HOOKS,
    TASK_METHODS,
    TASK_OPTIONS,
    UNSUPPORTED,
)

ERROR, WARNING, INFO = "error", "warning", "info"
SKIP_DIRS = frozenset({"__pycache__", ".git", ".venv", "venv", "site-packages", "node_modules", ".tox"})
MAX_FILES = 5000  # a bound on the walk: -A pointing at a huge tree still answers


@dataclass(frozen=True)
class Finding:
    """One thing to know before deploying: ``error`` blocks, ``warning`` and ``info`` do not."""

    level: str
    area: str
    subject: str
    message: str


def python_files(roots: Iterable[Path]) -> list[Path]:
    """Every ``.py`` file under the given files and directories, once, in a stable order."""
    found: dict[Path, None] = {}
    for root in roots:
        if root.is_file():
            found[root.resolve()] = None
            continue
        for path in sorted(root.rglob("*.py")):
            if not SKIP_DIRS.intersection(path.relative_to(root).parts) and len(found) < MAX_FILES:
                found[path.resolve()] = None
    return list(found)


def resolve_import(module: str, name: str | None) -> tuple[str, str, str]:
    """(level, replacement, advice) for ``from module import name`` (``import module``: None)."""
    if name is not None and f"{module}.{name}" in IMPORT_NAMES:
        target, advice = IMPORT_NAMES[f"{module}.{name}"]
        if target is None:
            return ERROR, "", advice
        return (WARNING if f"{module}.{name}" in IMPORT_WARNINGS else INFO), target, advice
    prefix = next((m for m in sorted(IMPORT_MODULES, key=len, reverse=True) if _under(module, m)), None)
    if prefix is None:
        return ERROR, "", "no taskq equivalent (Celery internals)"
    target, advice = IMPORT_MODULES[prefix]
    if target is None or prefix != module:
        return ERROR, "", advice or "no taskq equivalent"
    if name is None or name == "*" or hasattr(importlib.import_module(target), name):
        return INFO, f"{target}.{name}" if name and name != "*" else target, advice
    return ERROR, "", f"{target} has no {name}" + (f": {advice}" if advice else "")


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


@cache
def app_attributes() -> frozenset[str]:
    """What a taskq app answers to: class attributes and those set in ``__init__``."""
    from taskq.app import App

    instance = App("check-compat", set_as_current=False)
    return frozenset(dir(App)) | frozenset(vars(instance))


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _task_decorator(node: ast.expr) -> tuple[bool, list[ast.keyword]] | None:
    """``@x.task``, ``@shared_task`` or their calls: (is a decorator of a task, its keywords)."""
    call = node if isinstance(node, ast.Call) else None
    target = call.func if call else node
    named = (isinstance(target, ast.Attribute) and target.attr == "task") or (
        isinstance(target, ast.Name) and target.id in ("shared_task", "task")
    )
    return (True, list(call.keywords) if call else []) if named else None


class Scanner(ast.NodeVisitor):
    """Walks one file; ``app_names`` are the module-level names bound to the app."""

    def __init__(self, label: str, app_names: set[str]) -> None:
        self.label = label
        self.app_names = set(app_names)
        self.findings: list[Finding] = []
        self._main_guard = False
        self._seen: set[tuple[str, str]] = set()

    def add(self, level: str, node: ast.AST, subject: str, message: str, area: str = "source") -> None:
        key = (subject, message)
        if key not in self._seen:
            self._seen.add(key)
            self.findings.append(
                Finding(level, area, f"{self.label}:{getattr(node, 'lineno', 0)} {subject}", message)
            )

    def scan(self, tree: ast.Module) -> list[Finding]:
        for node in ast.walk(tree):  # names bound to an app created in this file
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                func = node.value.func
                if getattr(func, "id", getattr(func, "attr", None)) in ("Celery", "App"):
                    self.app_names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        self.visit(tree)
        return self.findings

    # -- imports ----------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._module(node, alias.name, None, f"import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return
        for alias in node.names:
            self._module(node, node.module, alias.name, f"from {node.module} import {alias.name}")

    def _module(self, node: ast.AST, module: str, name: str | None, text: str) -> None:
        top = module.partition(".")[0]
        if top in EXTENSIONS:
            self.add(ERROR, node, text, EXTENSIONS[top], area="imports")
        if top != "celery":
            return
        level, target, advice = resolve_import(module, name)
        if level == ERROR:
            self.add(ERROR, node, text, "not provided" + (f": {advice}" if advice else ""), area="imports")
            return
        if name is None:
            replacement = f"import {target}"
        else:
            module_part, _, attr = target.rpartition(".")
            replacement = f"from {module_part} import {attr}" if module_part else f"import {target}"
        why = f" ({advice})" if advice else ""
        self.add(level, node, text, f"becomes `{replacement}`{why}", area="imports")

    # -- the app and the tasks -----------------------------------------------------------
    def visit_If(self, node: ast.If) -> None:
        if not _is_main_guard(node):
            self.generic_visit(node)
            return
        self._main_guard, before = True, self._main_guard
        self.generic_visit(node)
        self._main_guard = before

    def visit_Attribute(self, node: ast.Attribute) -> None:
        base = node.value
        if isinstance(base, ast.Name) and base.id in self.app_names and node.attr not in app_attributes():
            advice = APP_ATTRIBUTES.get(node.attr, f"taskq's app has no {node.attr}")
            if self._main_guard:
                self.add(
                    WARNING,
                    node,
                    f"{base.id}.{node.attr}",
                    f"{advice} (only when the module runs as a script)",
                )
            else:
                self.add(ERROR, node, f"{base.id}.{node.attr}", advice)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "autodiscover_tasks"
            and not node.args
            and not any(k.arg == "packages" for k in node.keywords)
        ):
            self.add(
                ERROR, node, "autodiscover_tasks()",
                "without packages taskq discovers nothing (Celery reads Django's INSTALLED_APPS): "
                "pass them, e.g. app.autodiscover_tasks(lambda: settings.INSTALLED_APPS)",
            )  # fmt: skip
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        if "pytest_plugins" in names and "celery.contrib.pytest" in ast.unparse(node.value):
            self.add(
                WARNING, node, "pytest_plugins",
                "taskq's pytest plugin loads itself: drop celery.contrib.pytest and rename the "
                "celery_* fixtures to taskq_* (docs/testing.md)",
            )  # fmt: skip
        self.generic_visit(node)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for decorator in node.decorator_list:
            found = _task_decorator(decorator)
            if found is None:
                continue
            bound = False
            for keyword in found[1]:
                entry = TASK_OPTIONS.get(keyword.arg or "")
                if entry and entry[0] == UNSUPPORTED:
                    self.add(ERROR, keyword.value, f"{node.name}: {keyword.arg}=", entry[2], area="tasks")
                bound |= keyword.arg == "bind" and ast.unparse(keyword.value) == "True"
            if bound and node.args.args:
                self._methods_of(node.args.args[0].arg, node, node.name)
        self.generic_visit(node)

    visit_FunctionDef = _function  # noqa: N815
    visit_AsyncFunctionDef = _function  # noqa: N815

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        if any(ast.unparse(b).split(".")[-1] == "Task" for b in node.bases):
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            own = {m.name for m in methods}
            for method in methods:
                if method.name in TASK_HOOKS:
                    why = f"never called by taskq: {TASK_METHODS[method.name]}"
                    self.add(WARNING, method, f"{node.name}.{method.name}", why, area="tasks")
                if method.args.args:
                    self._methods_of(method.args.args[0].arg, method, node.name, own)
        self.generic_visit(node)

    def _methods_of(self, self_name: str, func: ast.AST, where: str, own: Collection[str] = ()) -> None:
        for inner in ast.walk(func):
            if (
                isinstance(inner, ast.Attribute)
                and isinstance(inner.value, ast.Name)
                and inner.value.id == self_name
                and inner.attr in TASK_METHODS
                and inner.attr not in own
            ):
                advice = TASK_METHODS[inner.attr]
                label = (
                    "never called by taskq" if inner.attr in TASK_HOOKS else "not provided by taskq's Task"
                )
                why = f"{label}: {advice}"
                self.add(ERROR, inner, f"{where}: {self_name}.{inner.attr}", why, area="tasks")


def scan_files(files: Iterable[Path], app_names_of: dict[Path, set[str]], base: Path) -> Iterator[Finding]:
    """Findings of every file; a file that does not parse is reported, not fatal."""
    for path in files:
        label = _label(path, base)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, OSError) as exc:
            yield Finding(WARNING, "source", label, f"not read: {type(exc).__name__}: {exc}")
            continue
        yield from Scanner(label, app_names_of.get(path, set())).scan(tree)


def _label(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def module_files(module: Any) -> Path | None:
    """The file of an imported module, if it has one."""
    origin = getattr(module, "__file__", None)
    return Path(origin).resolve() if origin else None
