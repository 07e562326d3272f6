"""docs/migrating-from-celery.md, run as a reader runs it: every ```sh command, in order.

The commands are read from the guide, not copied here, so a changed guide is a changed test. A
command the test has no check for fails the test; a command whose output the guide shows
(``<!-- output: ... -->`` before a ```text block) must print exactly that. Workers the guide
starts "in another terminal" run in the background and are tracked, so ``inspect ping`` and
``status`` must be answered by exactly the workers running at that point. The tutorial's Redis
URLs are pointed at this run's own database through ``CELERY_BROKER_URL`` and
``CELERY_RESULT_BACKEND``, which Celery and taskq both read (the guide says so).
"""

from __future__ import annotations

import ast
import filecmp
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "migrating-from-celery.md"
TUTORIAL = ROOT / "examples" / "celery_tutorial"
BIN = Path(sys.executable).parent
DOC_URL = "redis://localhost:6379/0"  # what the tutorial app names, and the guide's outputs show
COMMAND_TIMEOUT = 90.0
READY_TIMEOUT = 40.0
STOP_TIMEOUT = 30.0

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@dataclass
class Step:
    """One command of the guide, and the output the guide shows for it (if any)."""

    command: str
    output: str | None = None


def guide_steps(text: str) -> list[Step]:
    """The guide's commands in order: each line of a ```sh block (comments dropped)."""
    steps: list[Step] = []
    token = re.compile(r"<!-- output: [^>]*-->\n```text\n(.*?)```|```sh\n(.*?)```", re.S)
    for match in token.finditer(text):
        shown, block = match.groups()
        if shown is not None:
            assert steps, "an output block before any command"
            steps[-1].output = shown
            continue
        for line in block.splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command and not command.startswith("#"):
                steps.append(Step(command))
    return steps


@dataclass
class Session:
    """The reader's shell: a working directory, an environment, the workers left running."""

    root: Path
    env: dict[str, str]
    redis_url: str
    cwd: Path = field(init=False)
    workers: dict[Path, tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cwd = self.root

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        assert proc.returncode == 0, f"{command!r} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def start_worker(self, command: str) -> None:
        pidfile = self.cwd / re.search(r"--pidfile (\S+)", command).group(1)  # type: ignore[union-attr]
        log = self.cwd / f"{pidfile.stem}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while not (found := re.search(r"(\S+@\S+) ready\.", log.read_text(errors="replace"))):
            assert proc.poll() is None, f"{command!r} exited {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, (
                f"{command!r} not ready in {READY_TIMEOUT} s:\n{log.read_text()}"
            )
            time.sleep(0.1)
        self.workers[pidfile] = (found.group(1), proc, log)

    def stopped_by(self, command: str) -> None:
        """After ``kill -TERM "$(cat X.pid)"``: the worker of X.pid exits within the bound."""
        pidfile = self.cwd / re.search(r"cat (\S+?\.pid)", command).group(1)  # type: ignore[union-attr]
        node, proc, log = self.workers.pop(pidfile)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{node} did not stop on SIGTERM:\n{log.read_text()}") from None

    def running(self) -> set[str]:
        return {node for node, _, _ in self.workers.values()}

    def close(self) -> None:
        for node, proc, log in self.workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(STOP_TIMEOUT)
            print(f"--- {node} ({log}) ---\n{log.read_text(errors='replace')[-4000:]}")


def nodes_answering(output: str) -> set[str]:
    return set(re.findall(r"^->\s+(\S+): OK", output, re.M))


def same_tree(left: Path, right: Path) -> bool:
    compared = filecmp.dircmp(left, right, ignore=["__pycache__"])
    return not (
        compared.left_only or compared.right_only or compared.diff_files or compared.funny_files
    ) and all(same_tree(left / d, right / d) for d in compared.common_dirs)


# What each kind of command must do; every command of the guide has to match one of these.
Check = Callable[[Session, Step, "subprocess.CompletedProcess[str]"], None]


def printed(expected: str) -> Check:
    def check(session: Session, step: Step, proc: subprocess.CompletedProcess[str]) -> None:
        assert proc.stdout.strip() == expected, f"{step.command!r} printed {proc.stdout!r}"

    return check


def answered_by_running_workers(session: Session, step: Step, proc: subprocess.CompletedProcess[str]) -> None:
    assert nodes_answering(proc.stdout) == session.running(), proc.stdout
    count = len(session.running())
    assert f"{count} node{'s' if count != 1 else ''} online." in proc.stdout


def ported_as_committed(session: Session, step: Step, proc: subprocess.CompletedProcess[str]) -> None:
    assert same_tree(session.cwd / "proj", TUTORIAL / "after" / "proj"), "the port differs from after/"


def shown_output(session: Session, step: Step, proc: subprocess.CompletedProcess[str]) -> None:
    assert step.output is not None, f"the guide shows no output for {step.command!r}"
    assert proc.stdout.replace(session.redis_url, DOC_URL) == step.output


def json_report(session: Session, step: Step, proc: subprocess.CompletedProcess[str]) -> None:
    report = json.loads((session.cwd / "check-compat.json").read_text())
    assert report["implementation"] == "taskq" and report["blocking"] is False


def both_took_work(session: Session, step: Step, proc: subprocess.CompletedProcess[str]) -> None:
    totals = ast.literal_eval(proc.stdout.strip())
    assert set(totals) == session.running() and len(totals) == 2, totals
    assert all(sum(per_task.values()) > 0 for per_task in totals.values()), totals


def nothing_more(session: Session, step: Step, proc: subprocess.CompletedProcess[str]) -> None:
    pass


CHECKS: list[tuple[str, Check]] = [
    (r'^cp -r "\$TASKQ_SRC/examples/celery_tutorial/before" \S+$', nothing_more),
    (
        r"^sed -i 's/\^from celery import Celery\$/from taskq import Celery/' proj/celery\.py$",
        ported_as_committed,
    ),
    (r"^taskq -A proj check-compat$", shown_output),
    (r"^taskq -A proj check-compat --json > check-compat\.json$", json_report),
    (r"^(taskq|celery) -A proj (status|inspect ping)$", answered_by_running_workers),
    (r"^taskq -A proj inspect stats -j \| python -c .*\['total'\]", both_took_work),
    (
        r'^python -c "from proj\.tasks import add; print\(add\.delay\(4, 4\)\.get\(timeout=10\)\)"$',
        printed("8"),
    ),
    (
        r'^python -c "from proj\.tasks import add; print\(add\.delay\(2, 2\)\.get\(timeout=10\)\)"$',
        printed("4"),
    ),
    (r'^python -c "from proj\.tasks import add, mul, xsum; print\(', printed("8 64 6")),
    (r'^python -c "from taskq import chain; ', printed("64")),
    (r'^python -c "from taskq import group; ', printed("9900")),
]


@pytest.fixture
def session(tmp_path: Path, redis_url: str, redis_client: Any) -> Iterator[Session]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "TASKQ_"))}
    env.update(
        PATH=os.pathsep.join([str(BIN), env.get("PATH", "")]),
        TASKQ_SRC=str(ROOT),
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        PYTHONUNBUFFERED="1",
    )
    env.pop("PYTHONPATH", None)  # the reader's shell: the project comes from the working directory
    shell = Session(tmp_path, env, redis_url)
    try:
        yield shell
    finally:
        shell.close()


def test_the_guide_parses_into_the_walk_through() -> None:
    commands = [s.command for s in guide_steps(GUIDE.read_text())]
    workers = [c for c in commands if re.match(r"^(celery|taskq) -A proj worker ", c)]
    assert [c.split()[0] for c in workers] == ["celery", "taskq", "celery"]  # start, join, roll back
    assert sum(c.startswith("kill -TERM") for c in commands) == 2
    assert sum(s.output is not None for s in guide_steps(GUIDE.read_text())) == 2


def test_every_command_of_the_guide(session: Session) -> None:
    assert socket.gethostname()  # %h in the node names
    ran = 0
    for step in guide_steps(GUIDE.read_text()):
        command = step.command
        if command.startswith("cd "):
            session.cwd = (session.cwd / command[3:]).resolve()
            assert session.cwd.is_dir(), command
        elif re.match(r"^(celery|taskq) -A proj worker .*--pidfile \S+", command):
            session.start_worker(command)
        elif command.startswith("kill -TERM "):
            session.run(command)
            session.stopped_by(command)
        else:
            check = next((c for pattern, c in CHECKS if re.search(pattern, command)), None)
            assert check is not None, f"the guide runs {command!r}, and this test has no check for it"
            check(session, step, session.run(command))
        ran += 1
    assert ran >= 25, f"only {ran} commands found in the guide"
    assert session.running() == {f"celery1@{socket.gethostname()}"}  # rolled back at the end
