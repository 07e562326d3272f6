"""``taskq check-compat``: the classification against taskq's code, and fixture apps end to end.

Each fixture app is a package written to ``tmp_path`` under a name of its own, loaded by the
check as ``-A`` would load it, and removed from ``sys.modules`` afterwards.
"""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import taskq.app
from taskq import _state, signals
from taskq.check_compat import Report, check
from taskq.check_compat_table import IGNORED, KINDS, SETTINGS, UNSUPPORTED
from taskq.defaults import CELERY_SETTINGS, TASKQ_SETTINGS
from taskq.log import get_task_logger

ROOT = Path(__file__).resolve().parents[2]
# Modules that name settings without reading them: the tables themselves and this check.
NOT_READERS = {"defaults.py", "config.py", "check_compat.py", "check_compat_app.py", "check_compat_table.py"}


# -- the classification is the code's --------------------------------------------------------
def _names_read_by_taskq() -> set[str]:
    """Attribute names and string constants in taskq's code, docstrings and comments excluded."""
    names: set[str] = set()
    for path in (ROOT / "taskq").rglob("*.py"):
        if path.name in NOT_READERS or path.name.startswith("check_compat"):
            continue
        tree = ast.parse(path.read_text())
        prose = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
                names.add(node.value)
    return names


def test_every_setting_is_classified_once() -> None:
    assert set(SETTINGS) == set(CELERY_SETTINGS) | set(TASKQ_SETTINGS)
    assert {kind for kind, _ in SETTINGS.values()} <= set(KINDS)
    for name, (kind, why) in SETTINGS.items():
        assert kind == "same" or why, f"{name}: a {kind} setting needs its reason"


def test_settings_said_to_work_are_read_and_the_others_are_not() -> None:
    read = _names_read_by_taskq()
    working = {n for n, (k, _) in SETTINGS.items() if k not in (IGNORED, UNSUPPORTED)}
    idle = {n for n, (k, _) in SETTINGS.items() if k in (IGNORED, UNSUPPORTED)}
    assert sorted(working - read) == [], "classified as working, but nothing in taskq/ reads them"
    assert sorted(idle & read) == [], "classified as ignored/unsupported, but taskq/ reads them: reclassify"


def test_the_guide_tables_are_generated_from_these_tables() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_migration_tables.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


# -- fixture apps ----------------------------------------------------------------------------
@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``write({"celery.py": ..., "tasks.py": ...})`` makes a package; returns its unique name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    # shared tasks of other tests' modules would be registered on these apps too
    monkeypatch.setattr(taskq.app, "_shared_tasks", [])
    for var in ("TASKQ_BROKER_URL", "CELERY_BROKER_URL", "TASKQ_RESULT_BACKEND", "CELERY_RESULT_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    current, default = _state._current_app.get(), list(_state._default_app)
    made: list[str] = []

    def write(files: dict[str, str]) -> str:
        name = f"proj_{uuid.uuid4().hex[:10]}"
        package = tmp_path / name
        package.mkdir()
        (package / "__init__.py").write_text("")
        for filename, source in files.items():
            (package / filename).parent.mkdir(parents=True, exist_ok=True)
            (package / filename).write_text(textwrap.dedent(source).replace("PKG", name))
        made.append(name)
        return name

    yield write
    for module in [m for m in sys.modules if m.split(".")[0] in made]:
        del sys.modules[module]
    _state._current_app.set(current)
    _state._default_app[:] = default


APP = """\
from taskq import Celery

app = Celery("PKG", broker="redis://localhost:6379/0", backend="redis://localhost:6379/0",
             include=["PKG.tasks"])
app.conf.update(result_expires=3600)
"""
TASKS = """\
from .celery import app


@app.task
def add(x, y):
    return x + y
"""


def levels(report: Report, area: str | None = None) -> dict[str, str]:
    """{subject: level}, optionally for one area."""
    return {f.subject: f.level for f in report.findings if area is None or f.area == area}


def test_a_clean_port_does_not_block(project: Any) -> None:
    name = project({"celery.py": APP, "tasks.py": TASKS})
    report = check(name)
    assert report.implementation == "taskq"
    assert report.tasks == [f"{name}.tasks.add"]
    assert not report.blocking, report.text()
    assert levels(report) == {
        "worker_prefetch_multiplier": "info",
        "broker redis://localhost:6379/0": "info",
        "results redis://localhost:6379/0": "info",
    }
    assert report.text().endswith("nothing blocks: 0 errors, 0 warnings, 3 notes")


def test_settings_taskq_ignores_or_lacks(project: Any) -> None:
    config = APP + textwrap.dedent("""\
        app.conf.update(
            task_annotations={"*": {"rate_limit": "10/s"}},
            CELERY_WORKER_DIRECT=True,
            worker_hijack_root_logger=False,
            worker_state_db="/var/run/state.db",
            worker_prefetch_multiplier=4,
            broker_password="hunter2",
            worker_log_format="[%(asctime)s] %(message)s",
            task_serialiser="json",
            worker_redirect_stdouts=True,
        )
    """)
    report = check(project({"celery.py": config, "tasks.py": TASKS}))
    found = levels(report, "settings")
    assert found["task_annotations = {'*': {'rate_limit': '10/s'}}"] == "error"
    assert found["worker_direct = True"] == "error"  # the old name is checked under the new one
    assert found["broker_password = '********'"] == "error"  # secrets are not printed
    assert found["worker_hijack_root_logger = False"] == "warning"
    assert found["worker_log_format = '[%(asctime)s] %(message)s'"] == "warning"
    assert found["worker_state_db"] == "warning"
    assert found["task_serialiser"] == "warning"  # a typo
    assert "worker_prefetch_multiplier" not in found  # set to Celery's 4 explicitly
    assert not any("worker_redirect_stdouts" in s for s in found)  # Celery's default: no effect lost
    assert report.blocking


def test_deployment_broker_backend_and_values(project: Any) -> None:
    config = """\
        from taskq import Celery

        app = Celery("PKG", backend="db+postgresql://scott:tiger@db/results")
        app.conf.update(
            beat_scheduler="django_celery_beat.schedulers:DatabaseScheduler",
            worker_pool="mypools.Pool",
            timezone="Mars/Olympus_Mons",
            task_serializer="auth",
        )
    """
    found = levels(check(project({"celery.py": config})), "deployment")
    assert found["broker_url"] == "error"  # unset: SQLite here, amqp://localhost in Celery
    assert found["results db+postgresql://scott:**@db/results"] == "info"  # Celery's tables, shared
    assert found["beat_scheduler = 'django_celery_beat.schedulers:DatabaseScheduler'"] == "error"
    assert found["worker_pool = 'mypools.Pool'"] == "error"
    assert found["timezone = 'Mars/Olympus_Mons'"] == "error"
    assert "serializer 'auth'" not in found  # signing works where cryptography is installed


@pytest.mark.parametrize(
    ("broker", "level"),
    [
        ("amqp://guest@rabbit//", "info"),
        ("sqs://", "warning"),
        ("sqlite:///q.db", "warning"),
        ("nosuch://x", "error"),
    ],
)
def test_brokers_tested_untested_and_unknown(project: Any, broker: str, level: str) -> None:
    config = f'from taskq import Celery\napp = Celery("PKG", broker={broker!r}, backend="rpc://")\n'
    found = levels(check(project({"celery.py": config})), "deployment")
    assert [lvl for subject, lvl in found.items() if subject.startswith("broker ")] == [level]
    assert found["results rpc://"] == "info"


def test_task_options_and_methods(project: Any) -> None:
    tasks = """\
        from taskq import Task
        from .celery import app


        class Timed(Task):
            def __call__(self, *args, **kwargs):
                return super().__call__(*args, **kwargs)

            def shadow_name(self, args, kwargs, options):
                return "renamed"


        @app.task(base=Timed)
        def wrapped():
            return 1


        @app.task(trail=False, throws=(KeyError,))
        def quiet():
            return 2


        @app.task(bind=True)
        def swap(self, x):
            raise self.replace(quiet.s())
    """
    report = check(project({"celery.py": APP, "tasks.py": tasks}))
    found = levels(report, "tasks")
    name = report.app
    assert not any("__call__" in subject for subject in found)  # the worker calls it, as Celery's
    assert found[f"{name}.tasks.quiet: trail=False"] == "warning"
    assert found[f"{name}.tasks.quiet: throws=(<class 'KeyError'>,)"] == "warning"
    assert found[f"{name}/tasks.py:9 Timed.shadow_name"] == "warning"
    assert found[f"{name}/tasks.py:25 swap: self.replace"] == "error"
    assert report.blocking


def test_an_app_that_taskq_cannot_import_is_still_read(project: Any) -> None:
    tasks = """\
        from .celery import app


        @app.task(acks_on_failure=False, pydantic=True)
        def strict(x):
            return x
    """
    report = check(project({"celery.py": APP, "tasks.py": tasks}))
    assert report.blocking and report.tasks == []
    app_errors = [f for f in report.findings if f.area == "app"]
    assert len(app_errors) == 1 and "TypeError" in app_errors[0].message
    found = levels(report, "tasks")
    assert found[f"{report.app}/tasks.py:4 strict: acks_on_failure="] == "error"
    assert found[f"{report.app}/tasks.py:4 strict: pydantic="] == "error"


def test_source_app_methods_main_guard_and_autodiscover(project: Any) -> None:
    config = APP + textwrap.dedent("""\
        app.autodiscover_tasks()


        def run_worker():
            app.worker_main(["worker"])


        if __name__ == "__main__":
            app.start()
    """)
    found = levels(check(project({"celery.py": config})), "source")
    name = next(iter(found)).split("/")[0]
    assert found[f"{name}/celery.py:6 autodiscover_tasks()"] == "error"
    assert found[f"{name}/celery.py:10 app.worker_main"] == "error"
    assert found[f"{name}/celery.py:14 app.start"] == "warning"  # only when run as a script


def test_a_celery_app_before_the_port(project: Any, tmp_path: Path) -> None:
    config = """\
        from celery import Celery, current_app, subtask

        app = Celery("PKG", broker="redis://localhost:6379/0", include=["PKG.tasks"])
        app.conf.update(worker_prefetch_multiplier=4, worker_direct=True)
    """
    tasks = """\
        from celery.contrib.abortable import AbortableTask
        from celery.utils.log import get_task_logger
        from celery.canvas import chain
        import celery.schedules

        from .celery import app

        logger = get_task_logger(__name__)


        @app.task(bind=True, retry_on_worker_lost=True)
        def add(self, x, y):
            return x + y
    """
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text('pytest_plugins = ("celery.contrib.pytest",)\n')
    report = check(project({"celery.py": config, "tasks.py": tasks}), sources=[str(tests)])
    assert report.implementation == "celery"
    # Celery shares every app's tasks with apps created later in the process (other tests' apps)
    assert [t for t in report.tasks if t.startswith(f"{report.app}.")] == [f"{report.app}.tasks.add"]
    found = {f.subject.split(" ", 1)[1]: (f.level, f.message) for f in report.findings if f.area == "imports"}
    assert found["from celery import Celery"] == ("info", "becomes `from taskq import Celery`")
    assert found["from celery import current_app"][0] == "warning"  # a function in taskq
    assert found["from celery import subtask"] == (
        "info",
        "becomes `from taskq import signature` (Celery's old alias of signature)",
    )
    assert found["from celery.contrib.abortable import AbortableTask"][0] == "error"
    assert found["from celery.utils.log import get_task_logger"] == (
        "info",
        "becomes `from taskq.log import get_task_logger`",
    )
    assert found["from celery.canvas import chain"] == ("info", "becomes `from taskq import chain`")
    assert found["import celery.schedules"] == ("info", "becomes `import taskq.schedules`")
    subjects = levels(report)
    assert subjects[f"{report.app}/tasks.py:11 add: retry_on_worker_lost="] == "error"
    # what the Celery app set explicitly, whatever its spelling, and nothing it left to defaults
    assert levels(report, "settings") == {"worker_direct = True": "error"}
    assert subjects["tests/conftest.py:1 pytest_plugins"] == "warning"


def test_extensions_built_on_celery(project: Any) -> None:
    source = "import redbeat\nfrom django_celery_results.models import TaskResult\n"
    found = levels(check(project({"celery.py": APP, "extras.py": source})), "imports")
    assert sorted(found.values()) == ["error", "error"]


def test_a_receiver_of_a_signal_taskq_never_sends(project: Any) -> None:
    def receiver(**kwargs: Any) -> None:
        pass

    signals.after_setup_task_logger.connect(receiver)
    try:
        found = levels(check(project({"celery.py": APP})), "deployment")
    finally:
        signals.after_setup_task_logger.disconnect(receiver)
    assert found["after_setup_task_logger"] == "warning"


def test_the_command_exit_code_and_json(project: Any) -> None:
    from taskq.cli import cli

    clean = project({"celery.py": APP, "tasks.py": TASKS})
    blocked = project({"celery.py": APP + "app.conf.worker_direct = True\n", "tasks.py": TASKS})
    runner = CliRunner()
    ok = runner.invoke(cli, ["-A", clean, "check-compat", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["blocking"] is False and data["counts"] == {"error": 0, "warning": 0, "info": 3}
    assert data["files"] == [f"{clean}/__init__.py", f"{clean}/celery.py", f"{clean}/tasks.py"]
    bad = runner.invoke(cli, ["-A", blocked, "check-compat"])
    assert bad.exit_code == 1
    assert "worker_direct = True: not supported" in bad.output and "blocks the port: 1 error" in bad.output
    # -b overrides the broker as for every command
    other = runner.invoke(cli, ["-A", clean, "-b", "sqs://", "check-compat", "-j"])
    assert "broker sqs:///" in [f["subject"] for f in json.loads(other.output)["findings"]]
    usage = runner.invoke(cli, ["check-compat"])
    assert usage.exit_code == 2 and "needs the app" in usage.output


# -- taskq.log --------------------------------------------------------------------------------
def test_task_logger_records_carry_the_running_task(caplog: pytest.LogCaptureFixture) -> None:
    from taskq import Celery

    app = Celery("logs", broker="memory://", backend="memory://", set_as_current=False)
    logger = get_task_logger("proj.logs")

    @app.task(name="proj.logs.say")
    def say() -> None:
        logger.info("inside")

    with caplog.at_level(logging.INFO, logger="proj.logs"):
        result = say.apply(task_id="t-1")
        logger.info("outside")
    assert result.successful()
    inside, outside = (r for r in caplog.records if r.name == "proj.logs")
    assert (inside.task_id, inside.task_name) == ("t-1", "proj.logs.say")  # type: ignore[attr-defined]
    assert (outside.task_id, outside.task_name) == ("???", "???")  # type: ignore[attr-defined]
    assert logger.parent is logging.getLogger("taskq.task")
    with pytest.raises(RuntimeError, match="reserved"):
        get_task_logger("taskq.task")
