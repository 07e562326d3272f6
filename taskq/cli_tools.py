"""``taskq call``, ``purge``, ``result`` and ``shell``: Celery's one-shot client commands.

Options, prompts and printed lines follow Celery's, so a runbook written for ``celery`` works
unchanged; where Celery would print a traceback (broker down, task failed, no backend) these
print one line and exit non-zero.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click
from kombu.utils.json import dumps

from taskq import states
from taskq.cli_common import EX_UNAVAILABLE, CommandError, broker_errors, pluralize, say
from taskq.exceptions import BackendError, DisabledBackend, OperationalError, QueueNotFound
from taskq.exceptions import TimeoutError as ResultTimeout

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.cli import Settings

EX_TEMPFAIL = 75  # sysexits: the result is not there yet, try again later
RESULT_WAIT = 10.0  # seconds ``taskq result`` waits by default (Celery waits forever)


class JSONArray(click.ParamType):
    name = "json array"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        try:
            loaded = json.loads(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not isinstance(loaded, list):
            self.fail(f"{value} was not an array", param, ctx)
        return loaded


class JSONObject(click.ParamType):
    name = "json object"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, dict):
            return value
        try:
            loaded = json.loads(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if not isinstance(loaded, dict):
            self.fail(f"{value} was not an object", param, ctx)
        return loaded


class ISODateTime(click.ParamType):
    name = "iso-8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class ISODateTimeOrFloat(ISODateTime):
    name = "iso-8601 or float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return float(value)
        except (TypeError, ValueError):
            return super().convert(value, param, ctx)


@click.command()
@click.argument("name")
@click.option(
    "-a", "--args", "args", type=JSONArray(), default="[]", help="Positional arguments (JSON array)."
)
@click.option(
    "-k", "--kwargs", "kwargs", type=JSONObject(), default="{}", help="Keyword arguments (JSON object)."
)
@click.option("--eta", type=ISODateTime(), help="Scheduled time (ISO 8601).")
@click.option("--countdown", type=float, help="ETA in seconds from now.")
@click.option("--expires", type=ISODateTimeOrFloat(), help="Expiry: seconds from now or ISO 8601 time.")
@click.option("--serializer", default="json", show_default=True, help="Task serializer.")
@click.option("--queue", help="Custom queue name.")
@click.option("--exchange", help="Custom exchange name.")
@click.option("--routing-key", help="Custom routing key.")
@click.pass_obj
def call(settings: Settings, name: str, **opts: Any) -> None:
    """Send the task NAME (it need not be importable here) and print its id."""
    app = settings.app
    with broker_errors(app, "publish to"):
        result = app.send_task(
            name,
            args=opts["args"],
            kwargs=opts["kwargs"],
            countdown=opts["countdown"],
            eta=opts["eta"],
            expires=opts["expires"],
            serializer=opts["serializer"],
            queue=opts["queue"],
            exchange=opts["exchange"],
            routing_key=opts["routing_key"],
        )
    say(result.id)


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@click.command()
@click.option("-f", "--force", is_flag=True, help="Don't prompt for verification.")
@click.option("-Q", "--queues", help="Comma-separated queue names to purge (default: every known queue).")
@click.option("-X", "--exclude-queues", help="Comma-separated queue names not to purge.")
@click.pass_obj
def purge(settings: Settings, force: bool, queues: str | None, exclude_queues: str | None) -> None:
    """Erase all messages from the known task queues. There is no undo."""
    app = settings.app
    names = sorted(set(_csv(queues) or _known_queues(app)) - set(_csv(exclude_queues)))
    if not names:
        say("No queues to purge.")
        return
    headline = pluralize(len(names), "queue")
    if not force:
        click.confirm(
            f"WARNING:This will remove all tasks from {headline}: {', '.join(names)}.\n"
            "         There is no undo for this operation!\n\n"
            "(to skip this prompt use the -f option)\n"
            "Are you sure you want to delete all tasks?",
            abort=True,
        )
    with broker_errors(app):
        try:
            count = app.broker.purge(names)
        except QueueNotFound as exc:
            raise click.UsageError(str(exc.args[0] if exc.args else exc)) from None
    if count:
        say(f"Purged {count} {pluralize(count, 'message')} from {len(names)} known task {headline}.")
    else:
        say(f"No messages purged from {len(names)} {headline}.")


def _known_queues(app: App) -> list[str]:
    """Celery's ``app.amqp.queues``: task_queues, or the default queue."""
    queues = app.broker.queues
    return [queue.name for queue in queues.select()]


@click.command()
@click.argument("task_id")
@click.option("-t", "--task", help="Name of the task (when it uses a backend of its own).")
@click.option("--traceback", is_flag=True, help="Show the traceback instead of the value.")
@click.option(
    "--timeout",
    type=float,
    default=RESULT_WAIT,
    show_default=True,
    help="Seconds to wait for the task to finish (0: do not wait).",
)
@click.option("-j", "--json", "as_json", is_flag=True, help="Print id, state, result and traceback as JSON.")
@click.pass_obj
def result(
    settings: Settings, task_id: str, task: str | None, traceback: bool, timeout: float, as_json: bool
) -> None:
    """Print the return value (or with --traceback the traceback) of the task TASK_ID."""
    app = settings.app
    handle = app.tasks[task].AsyncResult(task_id) if task else app.AsyncResult(task_id)
    try:
        if traceback:
            click.echo(handle.traceback)
            return
        if timeout > 0:
            try:
                handle.get(timeout=timeout, propagate=False)
            except ResultTimeout:
                if not as_json:
                    raise CommandError(
                        f"task {task_id} is still {handle.state} after {timeout:g} s "
                        "(--timeout waits longer)",
                        EX_TEMPFAIL,
                    ) from None
        state = handle.state
        if as_json:
            value = handle.result
            if isinstance(value, BaseException):
                value = {"exc_type": type(value).__name__, "exc_message": [str(a) for a in value.args]}
            say(dumps({"task_id": task_id, "status": state, "result": value, "traceback": handle.traceback}))
            return
    except DisabledBackend as exc:
        raise CommandError(str(exc)) from None
    except (BackendError, OperationalError, OSError) as exc:  # the backends name their masked URL
        raise CommandError(f"cannot read the result of {task_id}: {exc}", EX_UNAVAILABLE) from None
    if state in states.PROPAGATE_STATES:
        raise CommandError(f"task {task_id} {_failure_text(state, handle.result)}")
    if state not in states.READY_STATES:
        raise CommandError(f"task {task_id} is {state}", EX_TEMPFAIL)
    click.echo(handle.result)


def _failure_text(state: str, exc: Any) -> str:
    if state == states.REVOKED:
        return "was revoked"
    detail = str(exc)
    return f"raised {type(exc).__name__}" + (f": {detail}" if detail else "")


# -- shell ----------------------------------------------------------------------------------
def shell_namespace(app: App, with_tasks: bool = True) -> dict[str, Any]:
    """What Celery's shell puts in scope: the app (also as ``celery``), canvas names, and tasks."""
    import taskq

    namespace: dict[str, Any] = {
        "app": app,
        "celery": app,
        "Task": taskq.Task,
        "chord": taskq.chord,
        "group": taskq.group,
        "chain": taskq.chain,
        "chunks": taskq.chunks,
        "xmap": taskq.xmap,
        "xstarmap": taskq.xstarmap,
        "subtask": taskq.signature,
        "signature": taskq.signature,
    }
    if with_tasks:
        for name, task in app.tasks.items():
            if not name.startswith("celery."):
                namespace[getattr(task, "__name__", None) or name.rpartition(".")[2]] = task
    return namespace


def _python_shell(namespace: dict[str, Any]) -> None:
    import code

    try:
        import readline
        import rlcompleter
    except ImportError:  # no readline on this platform: no tab completion
        pass
    else:
        readline.set_completer(rlcompleter.Completer(namespace).complete)
        readline.parse_and_bind("tab:complete")
    code.interact(local=namespace)


def _ipython_shell(namespace: dict[str, Any]) -> None:
    from IPython import start_ipython

    start_ipython(argv=[], user_ns=namespace)


def _bpython_shell(namespace: dict[str, Any]) -> None:
    import bpython

    bpython.embed(namespace)


@click.command()
@click.option("-I", "--ipython", is_flag=True, help="Force IPython.")
@click.option("-B", "--bpython", is_flag=True, help="Force bpython.")
@click.option("--python", is_flag=True, help="Force the default Python shell.")
@click.option("-T", "--without-tasks", is_flag=True, help="Don't add the tasks to the namespace.")
@click.pass_obj
def shell(settings: Settings, ipython: bool, bpython: bool, python: bool, without_tasks: bool) -> None:
    """Start a Python shell with the app, its tasks and the canvas (chain, group, chord...) loaded.

    IPython, else bpython, else Python's own shell, unless one is asked for.
    """
    app = settings.app
    try:
        app.import_modules()
    except ImportError as exc:
        raise CommandError(f"cannot import {exc.name or exc} (listed in imports/include)") from None
    namespace = shell_namespace(app, with_tasks=not without_tasks)
    if python:
        _python_shell(namespace)
        return
    forced = [(ipython, "IPython", _ipython_shell), (bpython, "bpython", _bpython_shell)]
    for asked, package, start in forced:
        if asked:
            try:
                __import__(package)
            except ImportError:
                raise CommandError(f"{package} is not installed") from None
            start(namespace)
            return
    for package, start in (("IPython", _ipython_shell), ("bpython", _bpython_shell)):
        try:
            __import__(package)
        except ImportError:
            continue
        start(namespace)
        return
    _python_shell(namespace)
