"""What ``taskq check-compat`` knows: every Celery setting, task option and import, classified.

One table serves the command and the migration guide (``docs/migrating-from-celery.md`` is
generated from it by ``tools/gen_migration_tables.py``), so the two cannot disagree. Each class of
setting was decided from taskq's code, not from intent, and ``tests/unit/test_check_compat.py``
keeps it so: a setting said to work must be read somewhere under ``taskq/``, one said to be
ignored or unsupported must not be.
"""

from __future__ import annotations

from typing import Any

from taskq.defaults import CELERY_SETTINGS, TASKQ_SETTINGS

# Kinds of setting, in the order the guide lists them.
SAME = "same"  # read by taskq, same meaning and default as Celery's
DEFAULT = "default"  # read by taskq, same meaning, another default
DIFFERENT = "different"  # read by taskq, but it behaves differently
IGNORED = "ignored"  # accepted and without effect, harmless to leave
UNSUPPORTED = "unsupported"  # a Celery feature taskq lacks: setting it blocks the port
TASKQ = "taskq"  # taskq's own (Celery ignores it)
KINDS = (SAME, DEFAULT, DIFFERENT, IGNORED, UNSUPPORTED, TASKQ)

# Celery 5.7's default where taskq's differs (``defaults.py`` holds taskq's).
CELERY_DEFAULTS: dict[str, Any] = {name: default for name, (_, default) in CELERY_SETTINGS.items()}
CELERY_DEFAULTS.update(worker_prefetch_multiplier=4, beat_schedule_filename="celerybeat-schedule")

_BACKENDS = {
    "arangodb_": "ArangoDB", "azureblockblob_": "Azure Block Blob",
    "cassandra_": "Cassandra", "cosmosdbsql_": "Cosmos DB", "couchbase_": "Couchbase",
    "elasticsearch_": "Elasticsearch",
    "gcs_": "Google Cloud Storage", "mongodb_": "MongoDB", "s3_": "S3",
}  # fmt: skip

_NOTES: dict[str, tuple[str, str]] = {
    # -- another default ----------------------------------------------------------------------
    "broker_url": (DEFAULT, "unset, Celery connects to amqp://guest@localhost//; taskq uses its embedded SQLite file (taskq.sqlite3 in the working directory): set it explicitly"),
    "broker_transport_options": (DEFAULT, "on Redis taskq adds socket_timeout=10, health_check_interval=10 and socket_keepalive unless given, so a silent server is noticed"),
    "worker_prefetch_multiplier": (DEFAULT, "1, not 4: a busy worker does not hoard short tasks; set 4 to keep Celery's prefetch"),
    "beat_schedule_filename": (DEFAULT, "taskq-beat-schedule, not celerybeat-schedule, and a JSON file rather than a shelve: a Celery beat and a taskq beat never share a file"),
    # -- read, but different --------------------------------------------------------------
    "beat_scheduler": (DIFFERENT, "Celery's PersistentScheduler path means taskq's; a third-party scheduler (django-celery-beat, RedBeat) imports Celery and cannot run; a subclass of taskq.beat.Scheduler can"),
    "worker_state_db": (DIFFERENT, "a JSON file, not Celery's shelve: never point a taskq and a Celery worker at the same path"),
    "worker_pool": (DIFFERENT, "Celery's pool names work (and asyncio); a custom pool class path does not"),
    "worker_pool_restarts": (DIFFERENT, "pool_restart is answered with an error even when enabled: restart the worker with SIGHUP instead"),
    # -- accepted, without effect -------------------------------------------------------------
    "broker_channel_error_retry": (IGNORED, "not read: a channel error while connecting is not retried (Celery's default)"),
    "broker_failover_strategy": (IGNORED, "not read: several broker URLs fail over in kombu's default order (round-robin)"),
    "broker_native_delayed_delivery_queue_type": (IGNORED, "taskq does not set up RabbitMQ native delayed delivery: ETA tasks wait in the worker on every queue type"),
    "broker_pool_acquire_timeout": (IGNORED, "a producer is awaited for broker_connection_timeout"),
    "result_backend_thread_safe": (IGNORED, "taskq always shares one backend object between threads"),
    "result_cache_max": (IGNORED, "results are never cached on the client"),
    "result_exchange": (IGNORED, "used by Celery's removed amqp result backend only; rpc:// replies go through the default exchange in both"),
    "result_exchange_type": (IGNORED, "as result_exchange"),
    "task_protocol": (IGNORED, "taskq always sends protocol 2, which every Celery 4 and 5 worker reads (it reads protocol 1 too)"),
    "task_remote_tracebacks": (IGNORED, "no tblib: a re-raised task error has the client's traceback; result.traceback holds the worker's text"),
    "worker_detect_quorum_queues": (IGNORED, "taskq never uses global QoS, which is what the detection turns off in Celery"),
    "worker_disable_prefetch": (IGNORED, "taskq's default prefetch (multiplier 1) already fetches only for free slots"),
    "worker_enable_prefetch_count_reduction": (IGNORED, "after a reconnection the prefetch is not reduced: reserved messages were returned to the queue"),
    "worker_hijack_root_logger": (IGNORED, "taskq worker configures the root logger unless a setup_logging receiver is connected: connect one to keep your own logging"),
    "worker_log_color": (IGNORED, "output is never coloured"),
    "worker_log_datefmt": (IGNORED, "taskq logs in Celery's default worker format; a setup_logging receiver can format them your way"),
    "worker_log_format": (IGNORED, "as worker_log_datefmt"),
    "worker_task_log_datefmt": (IGNORED, "as worker_log_datefmt"),
    "worker_task_log_format": (IGNORED, "taskq logs task lines in its one format, with no task_name[task_id] prefix; records of taskq.log task loggers carry both for a setup_logging receiver"),
    "worker_pool_putlocks": (IGNORED, "the consumer never hands the pool more work than it has free slots"),
    "worker_proc_alive_timeout": (IGNORED, "read by Celery's asynchronous prefork pool only; taskq drives billiard's threaded pool"),
    "worker_redirect_stdouts": (IGNORED, "print() in a task goes to the worker's stdout, not into the log"),
    "worker_redirect_stdouts_level": (IGNORED, "as worker_redirect_stdouts"),
    "worker_timer_precision": (IGNORED, "ETA and rate-limit waits are computed exactly, not polled"),
    # -- not supported --------------------------------------------------------------------
    "beat_enable_remote_control": (UNSUPPORTED, "taskq beat does not answer remote control (inspect ping) yet"),
    "beat_remote_control_max_tick_age": (UNSUPPORTED, "as beat_enable_remote_control"),
    "broker_host": (UNSUPPORTED, "Celery builds the broker URL from broker_host/port/user/password/vhost/transport; taskq reads broker_url only: fold them into it"),
    "broker_port": (UNSUPPORTED, "as broker_host"),
    "broker_user": (UNSUPPORTED, "as broker_host"),
    "broker_password": (UNSUPPORTED, "as broker_host"),
    "broker_vhost": (UNSUPPORTED, "as broker_host"),
    "broker_transport": (UNSUPPORTED, "as broker_host"),
    "redis_host": (UNSUPPORTED, "Celery's result_backend = 'redis' form; taskq reads host, port and db from the result_backend URL only"),
    "redis_port": (UNSUPPORTED, "as redis_host"),
    "redis_db": (UNSUPPORTED, "as redis_host"),
    "task_annotations": (UNSUPPORTED, "annotations are not applied: rate limits, time limits or handlers set through them silently stop; set them on the tasks"),
    "task_acks_on_failure": (UNSUPPORTED, "Celery 5.7 splits task_acks_on_failure_or_timeout in two; taskq reads only task_acks_on_failure_or_timeout"),
    "task_acks_on_timeout": (UNSUPPORTED, "as task_acks_on_failure"),
    "task_allow_error_cb_on_chord_header": (UNSUPPORTED, "errbacks of a chord are not attached to its header tasks"),
    "task_inherit_parent_priority": (UNSUPPORTED, "a task sent by a task keeps its own priority"),
    "task_retry_on_worker_lost": (UNSUPPORTED, "a task whose prefork child died is FAILURE (WorkerLostError), or requeued with acks_late + reject_on_worker_lost; it is not retried"),
    "worker_agent": (UNSUPPORTED, "Celery's cell agent is not provided"),
    "worker_autoscaler": (UNSUPPORTED, "taskq's autoscaler cannot be replaced by a class of yours"),
    "worker_consumer": (UNSUPPORTED, "taskq's consumer cannot be replaced by a class of yours"),
    "worker_timer": (UNSUPPORTED, "taskq's timer cannot be replaced by a class of yours"),
    "worker_cancel_long_running_tasks_on_connection_loss": (UNSUPPORTED, "running tasks keep running after a broker connection loss; with acks_late they may run twice"),
    "worker_deduplicate_successful_tasks": (UNSUPPORTED, "a redelivered acks_late task that already succeeded runs again"),
    "worker_direct": (UNSUPPORTED, "no per-worker <node>.dq2 queue: tasks routed to one are never consumed by a taskq worker"),
    "worker_enable_soft_shutdown_on_idle": (UNSUPPORTED, "as worker_soft_shutdown_timeout"),
    "worker_pool_start_method": (UNSUPPORTED, "the prefork pool always forks; 'spawn' is not available"),
    "worker_soft_shutdown_timeout": (UNSUPPORTED, "Celery 5.5's soft shutdown is not provided; taskq's warm shutdown waits for running tasks, bounded by worker_warm_shutdown_timeout"),
    # -- taskq's own ----------------------------------------------------------------------
    "taskq_sqlite_path": (TASKQ, "where the embedded SQLite broker and backend keep their file"),
    "beat_lease_seconds": (TASKQ, "length of the beat leader lease (0: no lease, as Celery)"),
    "security_hmac_key": (TASKQ, "shared secret of the hmac signing serializer (docs/security.md)"),
    "security_hmac_key_id": (TASKQ, "id of the hmac key messages are signed with"),
    "security_hmac_keys": (TASKQ, "other hmac key ids -> secrets still accepted while keys rotate"),
    "worker_warm_shutdown_timeout": (TASKQ, "bound on how long a warm shutdown waits for running tasks"),
    "task_max_deliveries": (TASKQ, "deliveries that ended without an ack (a worker or child died) before a message goes to the dead-letter queue"),
    "task_dead_letter_queue": (TASKQ, "one dead-letter queue for all queues instead of <queue>.dlq"),
    "publish_timeout": (TASKQ, "bound on a whole publish, connecting and retries included; then PublishError"),
    "broker_confirm_publish": (TASKQ, "RabbitMQ publisher confirms (Celery: broker_transport_options={'confirm_publish': True})"),
}  # fmt: skip


def _classify() -> dict[str, tuple[str, str]]:
    table: dict[str, tuple[str, str]] = {}
    for name in [*CELERY_SETTINGS, *TASKQ_SETTINGS]:
        family = next((label for prefix, label in _BACKENDS.items() if name.startswith(prefix)), None)
        if name in _NOTES:
            table[name] = _NOTES[name]
        elif family:
            why = f"a setting of Celery's {family} result backend, which taskq does not provide"
            table[name] = (IGNORED, why)
        else:
            table[name] = (SAME, "")
    return table


#: every setting name -> (kind, why)
SETTINGS: dict[str, tuple[str, str]] = _classify()

# -- task options ---------------------------------------------------------------------------
# name -> (kind, Celery's default, why). The ones taskq's Task refuses are a TypeError at import.
TASK_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "trail": (IGNORED, True, "children are always recorded in result.children"),
    "send_events": (IGNORED, True, "a worker started with -E sends the events of every task"),
    "resultrepr_maxsize": (IGNORED, 1024, "event results are cut at 1024 characters"),
    "throws": (IGNORED, (), "expected errors are logged with their traceback like any other"),
    "lazy": (IGNORED, True, "tasks are registered when the decorator runs"),
    "shared": (IGNORED, True, "@app.task registers on its app; use @shared_task for every app"),
    "acks_on_failure": (UNSUPPORTED, None, "Celery 5.7 option: taskq refuses it at import; use acks_on_failure_or_timeout"),
    "acks_on_timeout": (UNSUPPORTED, None, "as acks_on_failure"),
    "retry_on_worker_lost": (UNSUPPORTED, None, "Celery 5.7 option: taskq refuses it at import; use acks_late + reject_on_worker_lost"),
    "pydantic": (UNSUPPORTED, False, "argument validation with Pydantic is not provided: taskq refuses the option at import"),
    "pydantic_strict": (UNSUPPORTED, False, "as pydantic"),
    "pydantic_context": (UNSUPPORTED, None, "as pydantic"),
    "pydantic_dump_kwargs": (UNSUPPORTED, None, "as pydantic"),
    "backend": (UNSUPPORTED, None, "a per-task result backend is not supported: every task uses the app's result_backend"),
    "Request": (UNSUPPORTED, "celery.worker.request:Request", "a custom worker Request class is not used"),
    "Strategy": (UNSUPPORTED, "celery.worker.strategy:default", "a custom execution strategy is not used"),
}  # fmt: skip

# Task methods Celery has and taskq's Task lacks (self.<name> in a bound task fails).
TASK_METHODS: dict[str, str] = {
    "replace": "return a signature's result, or send it and return its id",
    "add_to_chord": "build the chord with all its header tasks up front",
    "send_event": "send custom events with app.events.Dispatcher().send(type, **fields)",
    "shadow_name": "give shadow= per call (apply_async(shadow=...)) instead",
    "on_bound": "set the class up at import instead",
    "on_replace": "Task.replace() is not provided either",
    "request_stack": "read self.request",
    "push_request": "read self.request",
    "pop_request": "read self.request",
    "signature_from_request": "build the signature with self.signature(args, kwargs)",
    "subtask_from_request": "build the signature with self.signature(args, kwargs)",
    "add_trail": "children are recorded by taskq itself",
}
# Of those, the hooks Celery calls on a Task subclass that defines them (a definition is reported).
TASK_HOOKS = frozenset({"shadow_name", "on_bound", "on_replace"})

# -- imports ---------------------------------------------------------------------------------
# celery module -> (taskq module or None, advice). A name is fine when the taskq module has it.
IMPORT_MODULES: dict[str, tuple[str | None, str]] = {
    "celery": ("taskq", ""),
    "celery.app": ("taskq", ""),
    "celery.app.base": ("taskq.app", ""),
    "celery.app.task": ("taskq.task", ""),
    "celery.app.control": ("taskq.control", ""),
    "celery.canvas": ("taskq.canvas", ""),
    "celery.schedules": ("taskq.schedules", ""),
    "celery.exceptions": ("taskq.exceptions", ""),
    "celery.result": ("taskq.result", ""),
    "celery.signals": ("taskq.signals", ""),
    "celery.states": ("taskq.states", ""),
    "celery.utils.log": ("taskq.log", ""),
    "celery.beat": ("taskq.beat", ""),
    "celery.events": ("taskq.events", ""),
    "celery.events.state": ("taskq.events_state", ""),
    "celery.events.receiver": ("taskq.events_receiver", ""),
    "celery.contrib.pytest": ("taskq.testing", "taskq's pytest plugin loads itself; the fixtures are taskq_app, taskq_worker, ... (docs/testing.md)"),
    "celery.contrib.testing": (None, "use the taskq_worker fixture, or taskq.testing.RunningWorker(app) and .start()/.stop() (docs/testing.md)"),
    "celery.contrib.abortable": (None, "revoke(terminate=True), or a flag the task polls"),
    "celery.contrib.rdb": (None, "run the worker with -P solo and use pdb"),
    "celery.contrib.migrate": (None, ""),
    "celery.contrib.sphinx": (None, ""),
    "celery.contrib.django": (None, "use a plain task and transaction.on_commit(lambda: task.delay(...))"),
    "celery.fixups": (None, "no Django fixup: call django.setup() in the app module and close database connections in a task_postrun receiver"),
    "celery.bin": (None, "custom celery sub-commands and user_options are not supported: write a click command of your own"),
    "celery.bootsteps": (None, "custom worker bootsteps are not supported: use worker_init, worker_ready, worker_process_init signals"),
    "celery.worker": (None, "Celery's worker internals (custom remote-control commands, Request) have no taskq counterpart"),
    "celery.security": ("taskq.security", "call app.setup_security(); taskq.security.setup_security takes the app first (docs/security.md)"),
    "celery.backends": (None, "Celery's backend classes are not used: the result_backend URL chooses taskq's"),
    "celery.loaders": (None, "taskq has one loader: config_from_object / config_from_envvar"),
    "celery.concurrency": (None, "pools are chosen by name (-P): prefork, threads, solo, asyncio, gevent, eventlet"),
    "celery.utils": (None, "Celery's internal helpers: use the standard library (datetime, zoneinfo, uuid)"),
    "celery.platforms": (None, "Celery's internal helpers"),
    "celery.local": (None, "no proxies: taskq.current_app() and taskq.current_task() are functions"),
    "celery.apps": (None, "start workers with `taskq worker` or taskq.worker.worker.Worker"),
}  # fmt: skip

# "celery.module.Name" -> (taskq replacement or None, advice); checked before IMPORT_MODULES.
IMPORT_NAMES: dict[str, tuple[str | None, str]] = {
    "celery.current_app": ("taskq.current_app", "a function in taskq: current_app().conf, not current_app.conf"),
    "celery.current_task": ("taskq.current_task", "a function in taskq: current_task(), None outside a task"),
    "celery.subtask": ("taskq.signature", "Celery's old alias of signature"),
    "celery.uuid": ("kombu.utils.uuid.uuid", "the same function, from kombu"),
    "celery.app.default_app": ("taskq.current_app", "call taskq.current_app()"),
    "celery.app.app_or_default": ("taskq.current_app", "call taskq.current_app()"),
    "celery.canvas.chain": ("taskq.chain", ""),
    "celery.canvas.group": ("taskq.group", ""),
    "celery.canvas.chord": ("taskq.chord", ""),
    "celery.canvas.chunks": ("taskq.chunks", ""),
    "celery.canvas.xmap": ("taskq.xmap", ""),
    "celery.canvas.xstarmap": ("taskq.xstarmap", ""),
    "celery.canvas.StampingVisitor": (None, "stamping is not provided (stamps sent by Celery clients are kept)"),
    "celery.result.allow_join_result": (None, "use result.get(disable_sync_subtasks=False)"),
    "celery.states.state": (None, "use taskq.states.precedence(state) to compare states"),
    "celery.contrib.testing.worker.start_worker": (None, "taskq.testing.RunningWorker(app) then .start() and .stop(), or the taskq_worker fixture"),
    "celery.worker.control.control_command": (None, "custom remote-control commands are not supported"),
    "celery.worker.control.inspect_command": (None, "custom inspect commands are not supported"),
}  # fmt: skip

# Of those, the replacements that are used differently (a function where Celery has an object).
IMPORT_WARNINGS = frozenset(
    {"celery.current_app", "celery.current_task", "celery.app.default_app", "celery.app.app_or_default"}
)

# Packages built on Celery's internals: importing them means the port is not done.
EXTENSIONS: dict[str, str] = {
    "django_celery_beat": "its DatabaseScheduler imports Celery: taskq beat reads beat_schedule (a subclass of taskq.beat.Scheduler can read a database)",
    "django_celery_results": "stores results through Celery's backend classes: use a redis:// or rpc:// result_backend",
    "redbeat": "not needed: taskq beat has a leader lease of its own (docs/beat.md)",
    "celery_once": "subclasses Celery's Task: not usable with taskq",
    "celery_singleton": "subclasses Celery's Task: not usable with taskq",
}  # fmt: skip

# App methods Celery has and taskq's App lacks, with what to do (other missing ones: generic advice).
APP_ATTRIBUTES: dict[str, str] = {
    "start": "app.start() runs Celery's command line: run `taskq -A <app> ...` instead",
    "worker_main": "app.worker_main() runs Celery's worker: run `taskq -A <app> worker` instead",
    "on_after_fork": "not provided: connect to taskq.signals.worker_process_init",
    "on_configure": "not provided: configure the app before creating workers, or use on_after_configure",
    "steps": "custom worker bootsteps are not supported",
    "user_options": "custom command-line options are not supported",
    "connection_for_write": "use app.broker.new_connection()",
    "connection_for_read": "use app.broker.new_connection()",
    "producer_or_acquire": "use app.send_task() or task.apply_async()",
}  # fmt: skip


def kind_of(name: str) -> tuple[str, str] | None:
    """(kind, why) of a new-style setting name; None for a name that is no setting."""
    return SETTINGS.get(name)
