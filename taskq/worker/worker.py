"""The worker: build the pieces in a readable order, run the consumer, stop cleanly.

Start-up is plain constructor calls (no bootsteps): import task modules, create the pool,
create the consumer, install signal handlers, run. SIGTERM/SIGINT ask for a warm stop (finish
running tasks, give back unstarted ones); a second SIGINT or SIGQUIT stops at once.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from taskq import __version__, signals
from taskq.daemon import node_format
from taskq.worker.consumer import Consumer
from taskq.worker.events import Heart
from taskq.worker.pools import create_pool
from taskq.worker.statedb import StateDB

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.beat import EmbeddedService
    from taskq.relaunch import CommandLine

logger = logging.getLogger("taskq.worker")
LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"


def expand_hostname(template: str | None) -> str:
    """Celery's node-name template: ``%h`` host, ``%n`` host name part, ``%d`` domain."""
    host = socket.gethostname()
    name, _, domain = host.partition(".")
    template = template or "celery@%h"
    out = template.replace("%h", host).replace("%n", name).replace("%d", domain).replace("%%", "%")
    return out if "@" in out else f"{out}@{host}"


def setup_logging(loglevel: str | int = "WARNING", logfile: str | None = None) -> None:
    """Configure the root logger once, Celery's format, unless a receiver of setup_logging did."""
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    if not isinstance(level, int):
        raise ValueError(f"unknown log level {loglevel!r}")
    if signals.setup_logging.receivers_for(None):
        signals.setup_logging.send(
            sender=None, loglevel=level, logfile=logfile, format=LOG_FORMAT, colorize=False
        )
        return
    handler: logging.Handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    signals.after_setup_logger.send(
        sender=None, logger=root, loglevel=level, logfile=logfile, format=LOG_FORMAT, colorize=False
    )


class Worker:
    """A worker node consuming ``queues`` with a pool of ``concurrency`` slots."""

    def __init__(
        self,
        app: App,
        *,
        concurrency: int | None = None,
        pool: str | None = None,
        queues: list[str] | None = None,
        exclude_queues: list[str] | None = None,
        hostname: str | None = None,
        prefetch_multiplier: int | None = None,
        include: list[str] | None = None,
        statedb: str | None = None,
        beat: bool = False,
        schedule_filename: str | None = None,
        scheduler: str | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        autoscale: tuple[int, int] | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        task_events: bool | None = None,
        without_heartbeat: bool = False,
    ) -> None:
        self.app = app
        conf = app.conf
        self.hostname = expand_hostname(hostname)
        self.pool_name = pool or conf.worker_pool
        self.concurrency = int(concurrency or conf.worker_concurrency or os.cpu_count() or 1)
        signals.celeryd_init.send(sender=self.hostname, instance=self, conf=conf)
        for module in include or ():
            conf.include = (*conf.include, module)
        app.import_modules()
        app.finalize()
        if time_limit is not None:  # worker-wide defaults, below per-task and per-call limits
            conf.task_time_limit = time_limit
        if soft_time_limit is not None:
            conf.task_soft_time_limit = soft_time_limit
        if autoscale is not None:  # Celery starts an autoscaled pool at its minimum
            self.concurrency = max(autoscale[1], 1)
        options: dict[str, Any] = {}
        if self.pool_name in ("prefork", "processes"):
            options = {
                "hostname": self.hostname,
                "max_tasks_per_child": max_tasks_per_child or conf.worker_max_tasks_per_child,
                "max_memory_per_child": max_memory_per_child or conf.worker_max_memory_per_child,
                "lost_worker_wait": conf.worker_lost_wait,
            }
        elif max_tasks_per_child or max_memory_per_child:
            raise ValueError("--max-tasks-per-child and --max-memory-per-child need -P prefork")
        self.pool = create_pool(self.pool_name, self.concurrency, app, **options)
        selected = app.broker.queues.select(queues or (), exclude_queues or ())
        if not selected:
            raise ValueError("no queues left to consume (all excluded with -X)")
        multiplier = conf.worker_prefetch_multiplier if prefetch_multiplier is None else prefetch_multiplier
        self.consumer = Consumer(app, self.pool, selected, self.hostname, multiplier)
        if task_events is not None:  # -E; else worker_send_task_events decides
            self.consumer.events.task_events = task_events
        # worker-online/heartbeat/offline, which monitors need to list this worker at all
        self.heart = None if without_heartbeat else Heart(self.consumer.events)
        if autoscale is not None:
            if self.pool_name not in ("prefork", "processes", "asyncio"):
                raise ValueError(f"--autoscale needs -P prefork (or asyncio), not -P {self.pool_name}")
            from taskq.worker.autoscale import Autoscaler

            # Celery reads the shrink delay from the environment too.
            keepalive = float(os.environ.get("AUTOSCALE_KEEPALIVE", 30))
            self.consumer.autoscaler = Autoscaler(self.pool, autoscale[0], autoscale[1], keepalive)
            # Celery prefetches for the maximum size: a window sized for the minimum never lets
            # enough messages in (acks_late ones stay unacked while they run) to show demand.
            self.consumer.prefetch_count = autoscale[0] * self.consumer.prefetch_multiplier
        self._stop_requests = 0
        state_path = statedb or conf.worker_state_db  # -S: revoked ids kept across restarts
        self.statedb = StateDB(node_format(state_path, self.hostname)) if state_path else None
        #: set by the CLI: what a SIGHUP restart re-executes (None: SIGHUP is left alone)
        self.restart_command: CommandLine | None = None
        self.restart_requested = False
        # -B: beat in a thread of this process (safe on several workers when a lease store exists).
        self.beat: EmbeddedService | None = None
        if beat:
            from taskq.beat import EmbeddedService

            self.beat = EmbeddedService(app, schedule_filename=schedule_filename, scheduler_cls=scheduler)
        signals.celeryd_after_setup.send(sender=self.hostname, instance=self, conf=conf)

    # -- reporting --------------------------------------------------------------------------
    def banner(self) -> str:
        app = self.app
        tasks = sorted(n for n in app.tasks if not n.startswith("celery."))
        queues = "\n".join(
            f"                .> {q.name:<16} exchange={q.exchange.name}({q.exchange.type}) key={q.routing_key}"
            for q in self.consumer.queues
        )
        backend = app.result_backend_url
        from taskq.broker import mask_url

        lines = [
            f" -------------- {self.hostname} v{__version__}",
            f"--- ***** ----- {platform.platform()} {platform.python_implementation()} {platform.python_version()}",
            "- *** --- * --- [config]",
            f"- ** ---------- .> app:         {app.main or '__main__'}:{id(app):#x}",
            f"- ** ---------- .> transport:   {app.broker.masked_url}"
            + ("  (embedded default)" if app.embedded else ""),
            f"- ** ---------- .> results:     {mask_url(backend) if backend else 'disabled://'}",
            f"- *** --- * --- .> concurrency: {self._concurrency_text()} ({self.pool_name})",
            "-------------- [queues]",
            queues,
            "",
            "[tasks]",
            *(f"  . {name}" for name in tasks),
            "",
        ]
        return "\n".join(lines)

    def _concurrency_text(self) -> str:
        scaler = self.consumer.autoscaler
        if scaler is not None:
            return f"{{min={scaler.min_size}, max={scaler.max_size}}}"
        return str(self.concurrency)

    # -- running ----------------------------------------------------------------------------
    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        # Celery's rule: SIGQUIT is cold, and so is a second Ctrl-C; SIGTERM is always warm.
        self.restart_requested = False  # a stop asked for during a SIGHUP restart wins
        if signum == signal.SIGINT:
            self._stop_requests += 1
        cold = signum == getattr(signal, "SIGQUIT", None) or self._stop_requests > 1
        name = signal.Signals(signum).name
        if cold:
            logger.warning("%s received: cold shutdown (running tasks are abandoned)", name)
            self.consumer.stopping = True
            self._cold = True
        else:
            logger.warning("%s received: warm shutdown (finishing running tasks)", name)
            self.consumer.stopping = True

    def install_signal_handlers(self) -> None:
        for name in ("SIGTERM", "SIGINT", "SIGQUIT"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), self._on_stop_signal)
        # As Celery: SIGHUP restarts only without a terminal, since closing one sends SIGHUP,
        # which must end the worker, not restart it in the background; macOS cannot exec safely.
        if hasattr(signal, "SIGHUP") and self.restart_command is not None and not _isatty(sys.stdout):
            signal.signal(signal.SIGHUP, self._on_restart_signal)

    def _on_restart_signal(self, signum: int, frame: FrameType | None) -> None:
        if sys.platform == "darwin":
            logger.warning("SIGHUP not supported: restarting with SIGHUP is unstable on this platform")
            return
        if self.consumer.stopping or self.restart_command is None:
            return  # already on its way out: a restart would undo a stop
        logger.warning(
            "SIGHUP received: restarting (warm shutdown, then exec %s)", " ".join(self.restart_command.argv)
        )
        self.restart_requested = True
        self.consumer.stopping = True

    def start(self, install_signals: bool = True) -> None:
        """Run until a stop signal or ``stop()``; always leaves the broker tidy."""
        self._cold = False
        if install_signals:
            self.install_signal_handlers()
        signals.worker_init.send(sender=self)
        if self.statedb is not None:  # before consuming, so no revoked task slips through
            count = self.statedb.load(self.consumer.revoked)
            logger.info("--statedb %s: %d revoked id(s) remembered", self.statedb.path, count)
            self.statedb.save_quietly(self.consumer.revoked)  # drops expired ones; unwritable? say so now
            self.statedb.attach(self.consumer.revoked)
        # The result store is made here, before any child is forked: made later by one thread
        # (a lost child's failure to record) while billiard forks a replacement from another,
        # the child would inherit that thread's import and app locks, held forever.
        self.app.backend  # noqa: B018
        self.pool.start()
        self.consumer.connect(startup=True)
        logger.info("%s ready.", self.hostname)
        signals.worker_ready.send(sender=self)
        if self.beat is not None:
            self.beat.start()
        if self.heart is not None:
            self.heart.start()
        try:
            self.consumer.loop()
        finally:
            if self.beat is not None:
                self.beat.stop()
            signals.worker_shutting_down.send(
                sender=self.hostname, sig=None, how="Cold" if self._cold else "Warm", exitcode=0
            )
            self.consumer.shutdown(graceful=not self._cold)
            if self.heart is not None:  # once no task event can follow it
                self.heart.stop()
            self.consumer.events.close()
            if self.statedb is not None:
                self.statedb.save_quietly(self.consumer.revoked)
            signals.worker_shutdown.send(sender=self)
            logger.info("%s stopped.", self.hostname)

    def stop(self) -> None:
        """Ask for a warm stop from another thread (tests, embedding)."""
        self.consumer.stopping = True


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # None (no stdout) or closed
        return False


def start_worker(app: App, **options: Any) -> Worker:
    """Build a worker and run it in the calling thread (blocks until stopped)."""
    worker = Worker(app, **options)
    worker.start()
    return worker
