"""The cluster as events describe it: workers and tasks, in memory, bounded (Celery's ``State``).

A monitor feeds every received event to ``State.event``; events may arrive out of order
(several workers, several connections, Celery's batches), so a task's state only moves forward
by Celery's precedence and a late event that logically happened before (``task-received``
after ``task-succeeded``) fills in its fields without undoing the outcome. Memory is bounded:
past ``max_tasks_in_memory``/``max_workers_in_memory`` the least recently updated go first.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import Any, Generic, TypeVar

from taskq import states

__all__ = ["HEARTBEAT_EXPIRE_WINDOW", "State", "Task", "Worker"]

#: a worker is offline once ``freq`` x this percentage passed without a heartbeat (Celery's 200)
HEARTBEAT_EXPIRE_WINDOW = 200
#: task event subject -> the state it means
TASK_EVENT_TO_STATE = {
    "sent": states.PENDING,
    "received": states.RECEIVED,
    "started": states.STARTED,
    "failed": states.FAILURE,
    "retried": states.RETRY,
    "succeeded": states.SUCCESS,
    "revoked": states.REVOKED,
    "rejected": states.REJECTED,
}
K = TypeVar("K")
V = TypeVar("V")


class _Bounded(OrderedDict[K, V], Generic[K, V]):
    """A dict that forgets its least recently updated entries past ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def touch(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class Worker:
    """A worker node: its last heartbeat fields and when its heartbeats arrived."""

    heartbeat_max = 4  # arrival times kept

    def __init__(self, hostname: str | None = None, pid: int | None = None, freq: float = 60, **fields: Any):
        self.hostname = hostname
        self.pid = pid
        self.freq = freq
        self.heartbeats: list[float] = []
        self.clock = 0
        self.active: int | None = None
        self.processed: int | None = None
        self.loadavg: list[float] | None = None
        self.sw_ident: str | None = None
        self.sw_ver: str | None = None
        self.sw_sys: str | None = None
        self.__dict__.update(fields)

    def event(
        self, subject: str | None, timestamp: float | None, local_received: float | None, fields: Any = None
    ) -> None:
        """Apply a ``worker-*`` event; a task event from this worker counts as a heartbeat too."""
        for key, value in (fields or {}).items():
            setattr(self, key, value)
        if subject == "offline":
            self.heartbeats.clear()
            return
        if not local_received or not timestamp:
            return
        if len(self.heartbeats) >= self.heartbeat_max:  # Celery drops the oldest before adding
            self.heartbeats.pop(0)
        bisect.insort(self.heartbeats, local_received)

    @property
    def heartbeat_expires(self) -> float:
        return self.heartbeats[-1] + float(self.freq) * HEARTBEAT_EXPIRE_WINDOW / 100

    @property
    def alive(self) -> bool:
        return bool(self.heartbeats) and time.time() < self.heartbeat_expires

    @property
    def status_string(self) -> str:
        return "ONLINE" if self.alive else "OFFLINE"

    @property
    def id(self) -> str:
        return f"{self.hostname}.{self.pid}"

    def __repr__(self) -> str:
        return f"<Worker: {self.hostname} ({self.status_string} clock:{self.clock})>"


class Task:
    """A task as its events tell it: name, arguments, state, outcome and the times of each step."""

    #: fields a logically earlier event may still fill in after a later one set the state
    merge_rules = {
        states.RECEIVED: ("name", "args", "kwargs", "parent_id", "root_id", "retries", "eta", "expires")
    }
    _info_fields = ("args", "kwargs", "retries", "result", "eta", "runtime", "expires", "exception",
                    "exchange", "routing_key", "root_id", "parent_id")  # fmt: skip

    def __init__(self, uuid: str | None = None, **fields: Any) -> None:
        self.uuid = uuid
        self.name: str | None = None
        self.state = states.PENDING
        # when each step happened (the event's timestamp), None until its event came
        self.sent: float | None = None
        self.received: float | None = None
        self.started: float | None = None
        self.succeeded: float | None = None
        self.failed: float | None = None
        self.retried: float | None = None
        self.revoked: float | None = None
        self.rejected: float | None = None
        self.timestamp: float | None = None  # of the event that set the state
        # what the events carry: reprs (args, kwargs, result, exception), ISO times (eta, expires)
        self.args: str | None = None
        self.kwargs: str | None = None
        self.eta: str | None = None
        self.expires: str | None = None
        self.retries: int | None = None
        self.result: str | None = None
        self.exception: str | None = None
        self.traceback: str | None = None
        self.runtime: float | None = None
        self.exchange: str | None = None
        self.routing_key: str | None = None
        self.root_id: str | None = None
        self.parent_id: str | None = None
        self.clock = 0
        self.worker: Worker | None = None
        self.client: str | None = None
        self.children: set[str] = set()
        self.__dict__.update(fields)

    def event(
        self, subject: str, timestamp: float | None, local_received: float | None, fields: Any = None
    ) -> None:
        """Apply a ``task-<subject>`` event (Celery's merge rule for events out of order)."""
        fields = dict(fields or {})
        state = TASK_EVENT_TO_STATE.get(subject)
        if state is not None:
            setattr(self, subject, timestamp)  # self.succeeded = when, and so on
        else:
            state = subject.upper()  # a custom event names a custom state
        earlier = states.precedence(state) > states.precedence(self.state)
        if state != states.RETRY and self.state != states.RETRY and earlier:
            keep = self.merge_rules.get(state)
            if keep is not None:
                fields = {k: v for k, v in fields.items() if k in keep}
        else:
            fields.update(state=state, timestamp=timestamp)
        self.__dict__.update(fields)

    @property
    def id(self) -> str | None:
        return self.uuid

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES

    @property
    def origin(self) -> str | None:
        return self.client if self.worker is None else self.worker.id

    def info(self, fields: Any = None, extra: Any = ()) -> dict[str, Any]:
        """The non-empty fields worth showing (Celery's selection unless ``fields`` is given)."""
        names = [*(self._info_fields if fields is None else fields), *extra]
        return {k: getattr(self, k) for k in names if getattr(self, k, None) is not None}

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        out["worker"] = self.worker.hostname if self.worker is not None else None
        out["children"] = sorted(self.children)
        return out

    def __repr__(self) -> str:
        return f"<Task: {self.name}({self.uuid}) {self.state} clock:{self.clock}>"


class State:
    """Workers (by host name) and tasks (by id) of the cluster, updated by ``event``."""

    def __init__(
        self,
        callback: Callable[[State, dict[str, Any]], Any] | None = None,
        max_workers_in_memory: int = 5000,
        max_tasks_in_memory: int = 10000,
        on_node_join: Callable[[Worker], Any] | None = None,
        on_node_leave: Callable[[Worker], Any] | None = None,
        **ignored: Any,
    ) -> None:
        self.event_callback = callback
        self.max_workers_in_memory = max_workers_in_memory
        self.max_tasks_in_memory = max_tasks_in_memory
        self.workers: _Bounded[str, Worker] = _Bounded(max_workers_in_memory)
        self.tasks: _Bounded[str, Task] = _Bounded(max_tasks_in_memory)
        self.on_node_join = on_node_join
        self.on_node_leave = on_node_leave
        self.event_count = 0
        self.task_count = 0
        self._seen_types: set[str] = set()
        self._order: dict[str, tuple[int, float]] = {}  # task id -> (clock, time) of its last event
        self._mutex = threading.RLock()

    def event(self, event: Mapping[str, Any]) -> tuple[tuple[Any, bool] | None, str]:
        """Apply one event; ``((worker or task, created), subject)`` as Celery returns it."""
        with self._mutex:
            self.event_count += 1
            if self.event_callback is not None:
                self.event_callback(self, dict(event))
            group, _, subject = str(event.get("type", "")).partition("-")
            if group == "worker":
                return self._worker_event(subject, event), subject
            if group == "task" and "uuid" in event:
                return self._task_event(subject, event), subject
            return None, subject

    def _worker_event(self, subject: str, event: Mapping[str, Any]) -> tuple[Worker, bool] | None:
        hostname = event.get("hostname")
        if not hostname:
            return None
        if subject == "offline" and hostname not in self.workers:
            worker, created = Worker(hostname), False  # as Celery: an unknown node leaving is not kept
        else:
            worker, created = self.get_or_create_worker(hostname)
        worker.event(subject, event.get("timestamp"), event.get("local_received"), event)
        if self.on_node_join is not None and (created or subject == "online"):
            self.on_node_join(worker)
        if self.on_node_leave is not None and subject == "offline":
            self.on_node_leave(worker)
            self.workers.pop(hostname, None)
        return worker, created

    def _task_event(self, subject: str, event: Mapping[str, Any]) -> tuple[Task, bool]:
        uuid, hostname = event["uuid"], event.get("hostname")
        task, created = self.get_or_create_task(uuid)
        timestamp, local_received = event.get("timestamp"), event.get("local_received")
        if subject == "sent":  # from the client, not a worker
            task.client = hostname
        elif hostname:
            worker, _ = self.get_or_create_worker(hostname)
            task.worker = worker
            worker.event(None, local_received, timestamp)  # as Celery: the event's time is the beat
        if subject == "received":
            self.task_count += 1
        task.event(subject, timestamp, local_received, event)
        self._order[uuid] = (int(event.get("clock") or 0), float(timestamp or 0.0))
        if task.name is not None:
            self._seen_types.add(task.name)
        if task.parent_id and task.parent_id in self.tasks:
            self.tasks[task.parent_id].children.add(uuid)
        return task, created

    def get_or_create_worker(self, hostname: str, **fields: Any) -> tuple[Worker, bool]:
        worker = self.workers.get(hostname)
        created = worker is None
        if worker is None:
            worker = Worker(hostname)
        worker.__dict__.update(fields)
        self.workers.touch(hostname, worker)
        return worker, created

    def get_or_create_task(self, uuid: str) -> tuple[Task, bool]:
        task = self.tasks.get(uuid)
        created = task is None
        if task is None:
            task = Task(uuid)
        self.tasks.touch(uuid, task)
        if len(self._order) > 2 * self.max_tasks_in_memory:  # forget the order of forgotten tasks
            self._order = {k: v for k, v in self._order.items() if k in self.tasks}
        return task, created

    def alive_workers(self) -> Iterator[Worker]:
        return (w for w in list(self.workers.values()) if w.alive)

    def itertasks(self, limit: int | None = None) -> Iterator[tuple[str, Task]]:
        return islice(list(self.tasks.items()), limit)

    def tasks_by_time(self, limit: int | None = None, reverse: bool = True) -> Iterator[tuple[str, Task]]:
        """``(uuid, task)`` by the time of each task's latest event, newest first by default."""
        with self._mutex:
            order = self._order
            rows = sorted(self.tasks.items(), key=lambda row: order.get(row[0], (0, 0.0)), reverse=reverse)
        return islice(iter(rows), limit)

    tasks_by_timestamp = tasks_by_time

    def tasks_by_type(
        self, name: str, limit: int | None = None, reverse: bool = True
    ) -> Iterator[tuple[str, Task]]:
        return islice(((u, t) for u, t in self.tasks_by_time(reverse=reverse) if t.name == name), limit)

    def tasks_by_worker(
        self, hostname: str, limit: int | None = None, reverse: bool = True
    ) -> Iterator[tuple[str, Task]]:
        rows = self.tasks_by_time(reverse=reverse)
        return islice(((u, t) for u, t in rows if t.worker and t.worker.hostname == hostname), limit)

    def task_types(self) -> list[str]:
        return sorted(self._seen_types)

    def clear_tasks(self, ready: bool = True) -> None:
        """Forget finished tasks (``ready``) or all of them."""
        with self._mutex:
            keep = [(u, t) for u, t in self.tasks.items() if ready and not t.ready]
            self.tasks.clear()
            self.tasks.update(keep)

    def clear(self, ready: bool = True) -> None:
        with self._mutex:
            self.workers.clear()
            self.clear_tasks(ready)
            self.event_count = self.task_count = 0

    def freeze_while(
        self, fun: Callable[..., Any], *args: Any, clear_after: bool = False, **kwargs: Any
    ) -> Any:
        """Run ``fun`` with no event applied meanwhile (a snapshot's consistent view)."""
        with self._mutex:
            try:
                return fun(*args, **kwargs)
            finally:
                if clear_after:
                    self.clear()

    def __repr__(self) -> str:
        return f"<State: events={self.event_count} tasks={self.task_count}>"
