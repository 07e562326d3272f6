"""The command line: option order, finding the app, and click's own surface."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from taskq import Celery, __version__
from taskq.cli import cli, find_app, reorder_args
from taskq.exceptions import ImproperlyConfigured


# -- reorder_args ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["worker", "-A", "proj", "-l", "info"], ["-A", "proj", "worker", "-l", "info"]),
        (["-B", "-A", "proj", "worker"], ["-A", "proj", "worker", "-B"]),
        (["-A", "proj", "worker", "-c", "2"], ["-A", "proj", "worker", "-c", "2"]),
        (["--app=proj", "worker"], ["--app=proj", "worker"]),
        (["-Aproj", "worker"], ["-Aproj", "worker"]),
        (["worker", "--app", "proj"], ["--app", "proj", "worker"]),
        (["worker", "--app=proj", "-c", "2"], ["--app=proj", "worker", "-c", "2"]),
        (["-c", "2", "-A", "proj", "worker"], ["-A", "proj", "worker", "-c", "2"]),
        (
            ["worker", "-b", "redis://h/0", "-A", "proj", "-B", "-Q", "a,b"],
            ["-b", "redis://h/0", "-A", "proj", "worker", "-B", "-Q", "a,b"],
        ),
        (["worker", "-q", "-A", "proj"], ["-q", "-A", "proj", "worker"]),
        (["-A", "proj", "worker", "--", "-A"], ["-A", "proj", "worker", "--", "-A"]),
        (["--version"], ["--version"]),
    ],
)
def test_reorder_args(argv: list[str], expected: list[str]) -> None:
    assert reorder_args(argv) == expected


def test_reorder_args_attached_value_after_the_command() -> None:
    """``taskq worker -Aproj`` is the old order with the attached form; it must reach the group
    like ``-Aproj worker`` does (today click gets ``worker -Aproj`` and fails: no such option)."""
    assert reorder_args(["worker", "-Aproj", "-l", "info"]) == ["-Aproj", "worker", "-l", "info"]


def test_reorder_args_keeps_command_option_values() -> None:
    # -n's value looks like nothing special; -c's value must not be taken for a command.
    argv = ["worker", "-n", "w1@%h", "-A", "proj", "-c", "4"]
    assert reorder_args(argv) == ["-A", "proj", "worker", "-n", "w1@%h", "-c", "4"]


# -- find_app -------------------------------------------------------------------------------
class Sources:
    """Writes uniquely named modules and packages into a directory on sys.path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: list[str] = []

    def module(self, source: str) -> str:
        name = f"climod_{uuid.uuid4().hex[:10]}"
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        self.names.append(name)
        return name

    def package(self, files: dict[str, str]) -> str:
        name = f"clipkg_{uuid.uuid4().hex[:10]}"
        (self.root / name).mkdir()
        for filename, source in {"__init__.py": "", **files}.items():
            (self.root / name / filename).write_text(textwrap.dedent(source))
        self.names.append(name)
        return name


@pytest.fixture
def sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sources]:
    monkeypatch.syspath_prepend(str(tmp_path))
    writer = Sources(tmp_path)
    yield writer
    for name in list(sys.modules):
        if any(name == n or name.startswith(n + ".") for n in writer.names):
            del sys.modules[name]


APP_MODULE = """
from taskq import Celery

app = Celery("found", broker="memory://", set_as_current=False)
other = Celery("other", broker="memory://", set_as_current=False)
"""


def test_find_app_module(sources: Sources) -> None:
    name = sources.module(APP_MODULE)
    app = find_app(name)
    assert isinstance(app, Celery)
    assert app is sys.modules[name].app


def test_find_app_module_colon_attr(sources: Sources) -> None:
    name = sources.module(APP_MODULE)
    assert find_app(f"{name}:other") is sys.modules[name].other
    assert find_app(f"{name}:app") is sys.modules[name].app


def test_find_app_module_dot_attr(sources: Sources) -> None:
    name = sources.module(APP_MODULE)
    assert find_app(f"{name}.other") is sys.modules[name].other


def test_find_app_attribute_named_celery(sources: Sources) -> None:
    name = sources.module(
        """
        from taskq import Celery
        celery = Celery("named-celery", set_as_current=False)
        """
    )
    assert find_app(name).main == "named-celery"


def test_find_app_package_with_celery_module(sources: Sources) -> None:
    pkg = sources.package(
        {
            "celery.py": """
            from taskq import Celery
            app = Celery("pkg-app", set_as_current=False)
            """,
            "tasks.py": "",
        }
    )
    app = find_app(pkg)
    assert app.main == "pkg-app"
    assert app is sys.modules[f"{pkg}.celery"].app


def test_find_app_package_importing_its_app(sources: Sources) -> None:
    """Celery's documented layout: ``from .celery import app as celery_app`` in __init__."""
    pkg = sources.package(
        {
            "__init__.py": "from .celery import app as celery_app\n",
            "celery.py": """
            from taskq import Celery
            app = Celery("layout", set_as_current=False)
            """,
        }
    )
    assert find_app(pkg).main == "layout"
    assert find_app(f"{pkg}.celery").main == "layout"
    assert find_app(f"{pkg}.celery:app").main == "layout"


def test_find_app_named_differently(sources: Sources) -> None:
    name = sources.module(
        """
        import os
        from taskq import Celery

        my_application = Celery("different", set_as_current=False)
        SOMETHING = 1
        """
    )
    assert find_app(name) is sys.modules[name].my_application


def test_find_app_factory(sources: Sources) -> None:
    name = sources.module(
        """
        from taskq import Celery

        def create_app():
            return Celery("made", set_as_current=False)
        """
    )
    assert find_app(f"{name}:create_app").main == "made"


def test_find_app_module_without_app(sources: Sources) -> None:
    name = sources.module("VALUE = 1\n")
    with pytest.raises(ImproperlyConfigured, match=rf"module '{name}' has no taskq/Celery app"):
        find_app(name)


def test_find_app_attr_is_not_an_app(sources: Sources) -> None:
    name = sources.module("VALUE = 1\n")
    with pytest.raises(ImproperlyConfigured, match="VALUE is not a taskq/Celery app"):
        find_app(f"{name}:VALUE")


def test_find_app_missing_module() -> None:
    with pytest.raises(ModuleNotFoundError):
        find_app("no_such_module_for_find_app_zz")


def test_find_app_missing_attribute_path(sources: Sources) -> None:
    name = sources.module(APP_MODULE)
    with pytest.raises(ImproperlyConfigured):
        find_app(f"{name}.nothing_here")


def test_find_app_does_not_hide_import_errors_inside_the_module(sources: Sources) -> None:
    name = sources.module("import no_such_dependency_for_cli_qq\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_for_cli_qq"):
        find_app(name)


# -- click surface --------------------------------------------------------------------------
def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"taskq {__version__}"


def test_worker_help() -> None:
    result = CliRunner().invoke(cli, reorder_args(["worker", "--help"]))
    assert result.exit_code == 0, result.output
    for flag in ("--concurrency", "--pool", "--queues", "--hostname", "--loglevel", "--prefetch-multiplier"):
        assert flag in result.output
    assert "Traceback" not in result.output


def test_group_help_lists_worker() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "worker" in result.output
    assert "--app" in result.output


def test_worker_with_unloadable_app_is_one_line() -> None:
    result = CliRunner().invoke(cli, ["-A", "no_such_module_for_cli_zz", "worker"])
    assert result.exit_code != 0
    assert "Unable to load app 'no_such_module_for_cli_zz'" in result.output
    assert "Traceback" not in result.output


def test_unknown_worker_option_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["worker", "--no-such-flag"])
    assert result.exit_code == 2
    assert "No such option" in result.output
