"""Write the generated tables of docs/migrating-from-celery.md from taskq's check-compat data.

The guide and ``taskq check-compat`` read the same tables (``taskq/check_compat_table.py``), so
what the guide says is unsupported is exactly what the command reports. Run it after changing
those tables; ``--check`` (used by the tests) exits 1 when the guide is out of date.

    .venv/bin/python tools/gen_migration_tables.py [--check]

Celery must be importable: the import map lists, per module, the Celery names taskq lacks.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from taskq.check_compat_source import ERROR, resolve_import
from taskq.check_compat_table import (
    CELERY_DEFAULTS,
    IMPORT_MODULES,
    IMPORT_NAMES,
    KINDS,
    SAME,
    SETTINGS,
    TASK_HOOKS,
    TASK_METHODS,
    TASK_OPTIONS,
    TASKQ,
)
from taskq.defaults import CELERY_SETTINGS

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "migrating-from-celery.md"
BLOCK = re.compile(r"(<!-- BEGIN GENERATED (\S+) [^>]*-->\n)(.*?)(<!-- END GENERATED \2 -->)", re.S)
KIND_TITLES = {
    "default": "Supported, with another default",
    "different": "Read, but behaving differently",
    "ignored": "Accepted, without effect (a warning when set)",
    "unsupported": "Not supported (an error when set: check-compat exits 1)",
    "taskq": "taskq's own settings (Celery ignores them)",
}


def _celery_names(module: str) -> list[str]:
    """Public names of a Celery module (``__all__`` when it has one)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return []
    names = getattr(mod, "__all__", None) or ()
    # Underscored names and lazily imported submodules (celery.local, celery.log) are no API.
    return sorted(
        str(n)
        for n in names
        if not str(n).startswith("_") and not isinstance(getattr(mod, n, None), ModuleType)
    )


def render_imports() -> str:
    rows = ["| Celery | taskq | notes |", "|---|---|---|"]
    for module, (target, advice) in IMPORT_MODULES.items():
        if target is None:
            rows.append(f"| `{module}`… | not provided | {advice} |")
            continue
        missing = [n for n in _celery_names(module) if resolve_import(module, n)[0] == ERROR]
        missing = [n for n in missing if f"{module}.{n}" not in IMPORT_NAMES]
        notes = [advice] if advice else []
        if missing:
            notes.append("not provided: " + ", ".join(f"`{n}`" for n in missing))
        rows.append(f"| `{module}` | `{target}` | {'; '.join(notes)} |")
    for name, (target, advice) in IMPORT_NAMES.items():
        rows.append(f"| `{name}` | {f'`{target}`' if target else 'not provided'} | {advice} |")
    return "\n".join(rows) + "\n"


def _root(name: str) -> str:
    """The setting whose reason ``name`` shares ("as X" refers to X)."""
    why = SETTINGS[name][1]
    return _root(why[3:]) if why.startswith("as ") and why[3:] in SETTINGS else name


def _grouped(kind: str) -> list[tuple[list[str], str]]:
    """Settings of one kind, one row per reason, sorted by their first name."""
    rows: dict[str, list[str]] = {}
    for name, (k, _) in SETTINGS.items():
        if k == kind:
            rows.setdefault(SETTINGS[_root(name)][1], []).append(name)
    return sorted(((sorted(names), why) for why, names in rows.items()), key=lambda row: row[0][0])


def _default(name: str) -> str:
    if name not in CELERY_DEFAULTS:
        return ""
    from taskq.config import DEFAULTS

    celery, taskq = CELERY_DEFAULTS[name], DEFAULTS[name]
    return f" (taskq: `{taskq!r}`, Celery: `{celery!r}`)" if celery != taskq else ""


def render_settings() -> str:
    counts = {kind: sum(SETTINGS[n][0] == kind for n in CELERY_SETTINGS) for kind in KINDS}
    extra = [n for n in SETTINGS if n not in CELERY_SETTINGS and SETTINGS[n][0] != TASKQ]
    lines = [
        f"Of Celery 5.7's {len(CELERY_SETTINGS)} settings: "
        + ", ".join(f"**{counts[k]} {k}**" for k in KINDS if k != TASKQ)
        + ". Also listed: taskq's own settings, and "
        + " and ".join(f"`{n}` ({SETTINGS[n][0]})" for n in extra)
        + ", which Celery reads without declaring them.",
        "",
    ]
    for kind in KINDS:
        if kind == SAME:
            continue
        lines += [f"**{KIND_TITLES[kind]}**", "", "| setting | why |", "|---|---|"]
        for names, why in _grouped(kind):
            label = ", ".join(f"`{n}`" for n in names)
            lines.append(f"| {label}{_default(names[0]) if len(names) == 1 else ''} | {why} |")
        lines.append("")
    same = sorted(n for n, (k, _) in SETTINGS.items() if k == SAME)
    lines += [
        f"**Supported as in Celery** ({len(same)}): " + ", ".join(f"`{n}`" for n in same) + ".",
        "",
    ]
    return "\n".join(lines)


def render_task_options() -> str:
    rows = ["| option or method | in taskq | why / what to do |", "|---|---|---|"]
    for name, (kind, _, why) in TASK_OPTIONS.items():
        rows.append(f"| `{name}=` | {kind} | {why} |")
    for name, why in TASK_METHODS.items():
        rows.append(f"| `self.{name}` | {'never called' if name in TASK_HOOKS else 'not provided'} | {why} |")
    return "\n".join(rows) + "\n"


RENDERERS: dict[str, Callable[[], str]] = {
    "imports": render_imports,
    "settings": render_settings,
    "task-options": render_task_options,
}


def regenerate(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        return match.group(1) + RENDERERS[match.group(2)]() + match.group(4)

    out = BLOCK.sub(replace, text)
    found = {m.group(2) for m in BLOCK.finditer(text)}
    if found != set(RENDERERS):
        raise SystemExit(f"{GUIDE}: generated blocks {sorted(found)}, expected {sorted(RENDERERS)}")
    return out


def main(argv: list[str]) -> int:
    text = GUIDE.read_text()
    new = regenerate(text)
    if "--check" in argv:
        if new != text:
            print(f"{GUIDE} is out of date: run python tools/gen_migration_tables.py", file=sys.stderr)
            return 1
        return 0
    GUIDE.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
