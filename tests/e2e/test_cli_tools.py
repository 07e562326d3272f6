"""``taskq events``, ``shell``, ``report``, ``list bindings`` and the error paths of every client
command, through the CLI on Redis and RabbitMQ; and a Celery worker answering ``taskq``."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from . import cli_support
from .cli_support import Cli, Cluster, unreachable
from .helpers import clean_env, wait_for, write_module

pytestmark = pytest.mark.e2e
cluster = cli_support.cluster  # fixtures shared with the other CLI test module
bare = cli_support.bare


# -- events ---------------------------------------------------------------------------------
def test_events_dump_shows_task_events(cluster: Cluster) -> None:
    with cluster.cli.popen("events", "--dump", "--timeout", "60") as events:
        events.wait_for("-> evdump: starting capture...")
        events.wait_for(f"{cluster.node} [")  # the heartbeat it asks for on start: it is listening
        task_id = cluster.cli.ok("call", "proj.add", "-a", "[2, 3]").strip()
        events.wait_for(f"task succeeded: proj.add({task_id}) args=[2, 3] kwargs={{}}")
        assert events.interrupt() == 0
    out = events.output
    received = re.search(
        rf"^{re.escape(cluster.node)} \[[^]]+\] task received: proj\.add\({task_id}\) .*$", out, re.M
    )
    assert received, out
    assert re.search(rf"task started: proj\.add\({task_id}\) args=\[2, 3\] kwargs={{}} clock=\d+", out)
    succeeded = re.search(rf"task succeeded: proj\.add\({task_id}\) .*$", out, re.M)
    assert succeeded and "result=5, runtime=" in succeeded.group(0)
    assert re.search(
        rf"^{re.escape(cluster.node)} \[[^]]+\] heartbeat: active=\d+, clock=\d+, freq=2\.0", out, re.M
    )


def test_events_dump_stops_after_limit(cluster: Cluster) -> None:
    started = time.monotonic()
    out = cluster.cli.ok("events", "--dump", "--limit", "2", "--timeout", "30")
    lines = out.splitlines()
    assert lines[0] == "-> evdump: starting capture..." and len(lines) == 3, out
    assert time.monotonic() - started < 25  # heartbeats every 2 s, one asked for at once


def test_events_live_view(cluster: Cluster) -> None:
    with cluster.cli.popen("events", "-F", "0.5", "--timeout", "60") as events:
        events.wait_for(f"  {cluster.node}")
        task_id = cluster.cli.ok("call", "proj.add", "-a", "[4, 5]").strip()
        cluster.cli.ok("result", task_id, "--timeout", "20")
        events.wait_for(f"  {task_id} proj.add")
        time.sleep(1.2)  # a redraw after the succeeded event
        assert events.interrupt() == 0
    frame = events.output.rsplit("taskq events -> ", 1)[1]
    assert re.search(rf"^  {re.escape(cluster.node)}\s+ONLINE\s+\d+\s+\d+", frame, re.M), frame
    assert re.search(rf"^  {task_id} proj\.add\s+SUCCESS\s+{re.escape(cluster.node)}\s+9 in ", frame, re.M), (
        frame
    )


CAMERA = """
import json


class Camera:
    def __init__(self, state, freq, maxrate):
        self.freq = freq

    def on_shutter(self, state):
        with open("shots.jsonl", "a") as out:
            out.write(json.dumps({"freq": self.freq, "workers": sorted(state.workers)}) + "\\n")
"""


def test_events_camera(cluster: Cluster) -> None:
    write_module(cluster.cli.cwd, "cam", CAMERA)
    shots = cluster.cli.cwd / "shots.jsonl"
    shots.unlink(missing_ok=True)
    out = cluster.cli.ok("events", "-c", "cam.Camera", "-F", "0.5", "--timeout", "4")
    assert out == ""
    taken = [json.loads(line) for line in shots.read_text().splitlines()]
    assert len(taken) >= 4 and all(shot["freq"] == 0.5 for shot in taken)
    assert cluster.node in taken[-1]["workers"]
    proc = cluster.cli("events", "-c", "cam.NoSuchCamera", "--timeout", "1")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: cannot load camera 'cam.NoSuchCamera': AttributeError")


def test_events_timeout_without_workers(bare: Cli) -> None:
    started = time.monotonic()
    assert bare.ok("events", "--dump", "--timeout", "1.5").startswith("-> evdump: starting capture...\n")
    assert time.monotonic() - started < 30


# -- shell ----------------------------------------------------------------------------------
SHELL_INPUT = """\
print("TASK", add.name, boom.name)
print("APP", app.main, celery is app)
print("CANVAS", type(chain(add.s(1, 2), add.s(3))).__name__, signature("proj.add").task)
print("SUM", add.delay(20, 22).get(timeout=20))
"""


def test_shell_with_piped_input(cluster: Cluster) -> None:
    out = cluster.cli.ok("shell", "--python", input=SHELL_INPUT)
    assert "TASK proj.add proj.boom" in out
    assert "APP proj True" in out
    assert "CANVAS chain proj.add" in out
    assert "SUM 42" in out


def test_shell_without_tasks(bare: Cli) -> None:
    out = bare.ok("shell", "--python", "-T", input="print('ADD' in dir() or 'add' in dir())\n")
    assert "False" in out


def test_shell_asked_for_a_missing_ipython(bare: Cli) -> None:
    if importlib.util.find_spec("IPython") is not None:
        pytest.skip("IPython is installed here: --ipython would start it")
    proc = bare("shell", "--ipython", input="")
    assert (proc.returncode, proc.stderr) == (1, "Error: IPython is not installed\n")


# -- report ---------------------------------------------------------------------------------
def test_report_masks_secrets(tmp_path: Path) -> None:
    write_module(tmp_path, "proj", "from taskq import Celery\napp = Celery('proj')\n")
    write_module(
        tmp_path,
        "cliconfig",
        """
        broker_transport_options = {"sentinel_kwargs": {"password": "hunter2"}, "visibility_timeout": 99}
        result_backend = "redis://:backendpw@127.0.0.1:6379/2"
        """,
    )
    proc = Cli(tmp_path, "", "")(
        "-A", "proj", "-b", "amqp://guest:brokerpw@rabbit.example:5672/vh", "--config", "cliconfig", "report",
        base=False,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr
    for secret in ("brokerpw", "hunter2", "backendpw"):
        assert secret not in out + proc.stderr
    assert re.match(r"software -> taskq:\S+ \(Celery 5 compatible, task protocol 2\) kombu:\S+ py:\S+\n", out)
    assert "settings -> transport:amqp results:redis://:**@127.0.0.1:6379/2\n" in out
    assert "broker_url: 'amqp://guest:**@rabbit.example:5672/vh'\n" in out
    assert "'password': '********'" in out and "'visibility_timeout': 99" in out


# -- list bindings --------------------------------------------------------------------------
def test_list_bindings(bare: Cli) -> None:
    proc = bare("list", "bindings")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["Queue", "Exchange", "Routing", "Key"]
    assert re.fullmatch(r"-{16} {13}-{16} {13}-{16}", lines[1])
    assert any(line.split() == ["celery", "celery", "celery"] for line in lines[2:]), proc.stdout
    if bare.broker.startswith("amqp") and proc.stderr:  # no management plugin: the declared ones
        assert proc.stderr.startswith("note: RabbitMQ management API not reachable at http://guest:**@")


class FakeManagement(BaseHTTPRequestHandler):
    """RabbitMQ's ``GET /api/bindings/<vhost>`` as the management plugin answers it."""

    seen: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        body = json.dumps(
            [
                {"source": "", "destination": "celery", "destination_type": "queue", "routing_key": "celery"},
                {
                    "source": "stubx",
                    "destination": "stubq",
                    "destination_type": "queue",
                    "routing_key": "stub.k",
                },
                {
                    "source": "stubx",
                    "destination": "otherx",
                    "destination_type": "exchange",
                    "routing_key": "#",
                },
            ]
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def fake_management() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeManagement)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_list_bindings_through_the_management_api(amqp_url: str, redis_url: str, tmp_path: Path) -> None:
    write_module(tmp_path, "proj", "from taskq import Celery\napp = Celery('proj')\n")
    cli = Cli(tmp_path, amqp_url, redis_url)
    FakeManagement.seen.clear()
    with fake_management() as port:
        out = cli.ok("list", "bindings", "--management-url", f"http://mgr:p%40ss@127.0.0.1:{port}")
    vhost = amqp_url.rsplit("/", 1)[1] or "/"
    assert FakeManagement.seen[0][0] == f"/api/bindings/{vhost.replace('/', '%2F')}"
    assert FakeManagement.seen[0][1] == "Basic bWdyOnBAc3M="  # mgr:p@ss
    rows = [line.split() for line in out.splitlines()[2:]]
    assert rows == [["celery", "celery"], ["stubq", "stubx", "stub.k"]]
    proc = cli("list", "bindings", "--management-url", "http://mgr:secretpw@127.0.0.1:1")
    assert proc.returncode == 69
    assert proc.stderr.startswith("Error: cannot read bindings from http://mgr:**@127.0.0.1:1")


# -- errors ---------------------------------------------------------------------------------
def test_no_worker_answers(bare: Cli) -> None:
    for args in (("status",), ("inspect", "ping"), ("control", "heartbeat")):
        proc = bare(*args, "-d", "nobody@nowhere", "-t", "0.5")
        assert (proc.returncode, proc.stdout) == (69, ""), args
        assert proc.stderr == "Error: No nodes replied within time constraint\n"


UNREACHABLE_COMMANDS = [
    ("status",),
    ("inspect", "ping"),
    ("control", "rate_limit", "proj.add", "1/s"),
    ("call", "proj.add", "-a", "[1, 2]"),
    ("purge", "-f"),
    ("list", "bindings"),
    ("events", "--dump", "--timeout", "5"),
]


@pytest.mark.parametrize("args", UNREACHABLE_COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_unreachable_broker_is_one_line(bare: Cli, args: tuple[str, ...]) -> None:
    cli = Cli(bare.cwd, unreachable(bare.broker), bare.backend)
    proc = cli(*args)
    assert proc.returncode == 69, proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout
    (line,) = proc.stderr.splitlines()
    assert re.match(r"Error: cannot (connect to|publish to) \w+://\S*:\*\*@127\.0\.0\.1:1/", line), line


def test_unreachable_result_backend(bare: Cli) -> None:
    cli = Cli(bare.cwd, bare.broker, "redis://:s3cret-pw@127.0.0.1:1/0")
    proc = cli("result", "some-id", "--timeout", "1")
    assert proc.returncode == 69
    assert "s3cret-pw" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("Error: cannot read the result of some-id: ")


# -- a Celery worker answers taskq ----------------------------------------------------------
CELERY_APP = """
from celery import Celery

app = Celery("celeryside")


@app.task
def add(x, y):
    return x + y
"""


def test_celery_worker_answers_taskq_commands(redis_url: str, tmp_path: Path) -> None:
    write_module(tmp_path, "celeryside", CELERY_APP)
    celery = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "celeryside",
        "-b",
        redis_url,
        "--result-backend",
        redis_url,
    ]
    log = (tmp_path / "celery.log").open("wb")
    proc = subprocess.Popen(
        [*celery, "worker", "-P", "solo", "-n", "celeryside@%h", "-l", "info"],
        cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        found = wait_for(
            lambda: (
                proc.poll() is None
                and re.search(r"(celeryside@\S+) ready\.", (tmp_path / "celery.log").read_text())
            ),
            30,
            "the Celery worker to be ready",
        )
        node = found.group(1)
        cli = Cli(tmp_path, redis_url, redis_url)
        write_module(tmp_path, "proj", "from taskq import Celery\napp = Celery('proj')\n")
        assert (
            cli.ok("inspect", "ping", "-d", node, "-t", "10")
            == f"->  {node}: OK\n        pong\n\n1 node online.\n"
        )
        assert "\n    * celeryside.add\n" in cli.ok("inspect", "registered", "-d", node, "-t", "10")
        task_id = cli.ok("call", "celeryside.add", "-a", "[2, 3]").strip()
        assert cli.ok("result", task_id, "--timeout", "20") == "5\n"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
