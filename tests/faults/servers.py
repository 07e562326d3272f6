"""Brokers a test may break: a private redis-server, and the local RabbitMQ via rabbitmqctl.

The shared Redis on 6379 is never restarted: other test runs use it. A private redis-server
on a free port is ours to kill. RabbitMQ runs once per machine, so a restart is
``stop_app``/``start_app`` on it, always followed by a start, whatever happened in between.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from e2e.helpers import wait_for

SERVER_TIMEOUT = 30.0  # seconds a broker may take to answer again after a (re)start


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_answers(port: int) -> bool:
    """True once the server replies PONG (not LOADING, not refused): it can serve commands."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class PrivateRedis:
    """A redis-server of this test's own, restartable on the same port.

    With ``aof`` every write is fsynced before it is answered (``appendfsync always``), as a
    production broker would be configured: what a client saw confirmed survives a crash.
    """

    def __init__(self, directory: Path, aof: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.aof = aof
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def command(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        )
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            *persistence, "--dir", str(self.directory), "--daemonize", "no",
        ]  # fmt: skip

    def start(self) -> None:
        self.starts += 1
        log = (self.directory / f"redis-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.directory)
        log.close()  # the child has its own descriptor
        wait_for(self._ready, SERVER_TIMEOUT, f"redis-server on port {self.port} to answer PING")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}:\n{self.logs()}")
        return redis_answers(self.port)

    def stop(self, signum: int = signal.SIGKILL) -> None:
        """Stop it (SIGKILL: a crash; SIGTERM: a clean shutdown) and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(SERVER_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(SERVER_TIMEOUT)
        self.proc = None

    def restart(self, signum: int = signal.SIGKILL, down_for: float = 0.0) -> None:
        """Kill it, stay down ``down_for`` seconds, start again on the same port and data dir."""
        self.stop(signum)
        time.sleep(down_for)
        self.start()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.directory.glob("redis-*.log")))


def amqp_answers(url: str) -> bool:
    """True once a full AMQP handshake (login, vhost) succeeds, not merely a TCP accept."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
            return True
    except Exception:
        return False


class RabbitControl:
    """``rabbitmqctl`` on the local node: make vhosts, stop and start the application."""

    def __init__(self, ctl: str) -> None:
        self.ctl = ctl
        self.stopped = False

    def run(self, *args: str) -> None:
        subprocess.run([self.ctl, *args], check=True, capture_output=True, timeout=120)

    def add_vhost(self, vhost: str) -> None:
        self.run("add_vhost", vhost)
        self.run("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        subprocess.run([self.ctl, "delete_vhost", vhost], capture_output=True, timeout=120)

    def stop_app(self) -> None:
        self.stopped = True
        self.run("stop_app")

    def start_app(self, url: str) -> None:
        """Start the application and wait until ``url`` accepts an AMQP login again."""
        self.run("start_app")
        self.stopped = False
        wait_for(lambda: amqp_answers(url), SERVER_TIMEOUT, "RabbitMQ to accept AMQP connections again")

    def restart(self, url: str, down_for: float = 0.0) -> None:
        try:
            self.stop_app()
            time.sleep(down_for)
        finally:
            self.start_app(url)
