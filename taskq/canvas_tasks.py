"""chunks, xmap, xstarmap, and the canvas tasks every Celery app registers under Celery's names.

``xmap``/``xstarmap`` run a task over many arguments inside ONE task (one message, one result:
the list); ``chunks`` splits the arguments into a group of ``xstarmap`` tasks of ``n`` each. The
built-ins ``celery.chain``/``celery.group``/``celery.chord`` let a workflow arrive as a message
of its own (as Celery can send one) and be started by the worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskq.canvas import Signature, from_dict
from taskq.workflows import chain, chord, group

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.task import Task


class _Map(Signature):
    """A signature of ``celery.map``/``celery.starmap``: ``kwargs = {"task": sig, "it": [...]}``."""

    builtin = "celery.map"

    def __init__(
        self, task: Any, it: Iterable[Any] | None = None, app: App | None = None, **options: Any
    ) -> None:
        if isinstance(task, Mapping) and task.get("task") == self.builtin:
            super().__init__(task, app=app)
            return
        sig = task if isinstance(task, Signature) else Signature(task, app=app)
        kwargs = {"task": dict(sig), "it": [list(a) if isinstance(a, tuple) else a for a in (it or ())]}
        super().__init__(self.builtin, (), kwargs, options, immutable=True, app=app or sig._app)


class xmap(_Map):  # noqa: N801 - Celery's name
    """``task.map(it)``: ``[task(x) for x in it]`` in one task."""

    builtin = "celery.map"


class xstarmap(_Map):  # noqa: N801
    """``task.starmap(it)``: ``[task(*args) for args in it]`` in one task."""

    builtin = "celery.starmap"


class chunks(Signature):  # noqa: N801
    """``task.chunks(it, n)``: the arguments split into groups of ``n`` xstarmap tasks."""

    def __init__(self, task: Any, it: Iterable[Any] | None = None, n: int = 1, app: App | None = None,
                 **options: Any) -> None:  # fmt: skip
        if isinstance(task, Mapping) and task.get("task") == "celery.chunks":
            super().__init__(task, app=app)
            return
        sig = task if isinstance(task, Signature) else Signature(task, app=app)
        kwargs = {"task": dict(sig), "it": [list(a) for a in (it or ())], "n": int(n)}
        super().__init__("celery.chunks", (), kwargs, options, immutable=True, app=app or sig._app)

    def group(self) -> group:
        """The group of ``xstarmap`` tasks, one per chunk of ``n`` argument tuples."""
        task, items, n = self.kwargs["task"], list(self.kwargs["it"]), max(int(self.kwargs["n"]), 1)
        parts = [
            xstarmap(from_dict(task, self._app), items[i : i + n], app=self._app)
            for i in range(0, len(items), n)
        ]
        return group(*parts, app=self._app)

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> Any:  # fmt: skip
        return self.group().apply_async(args, kwargs, **{**self.options, **options})

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:  # fmt: skip
        return self.group().apply(args, kwargs, **options)


def register_canvas_tasks(app: App) -> None:
    """The canvas built-ins, under Celery's names (a Celery client may address them)."""
    if "celery.map" in app.tasks:
        return

    def run_map(task: Mapping[str, Any], it: Iterable[Any]) -> list[Any]:
        sig = from_dict(task, app)
        return [sig(item) for item in it]

    def run_starmap(task: Mapping[str, Any], it: Iterable[Sequence[Any]]) -> list[Any]:
        sig = from_dict(task, app)
        return [sig(*item) for item in it]

    def run_chunks(task: Mapping[str, Any], it: Iterable[Sequence[Any]], n: int) -> Any:
        return chunks(from_dict(task, app), it, n, app=app).apply_async()

    def run_group(tasks: Sequence[Mapping[str, Any]], *args: Any, **kwargs: Any) -> Any:
        return group(*tasks, app=app).apply_async(args, kwargs.get("kwargs"))

    def run_chain(tasks: Sequence[Mapping[str, Any]], *args: Any, **kwargs: Any) -> Any:
        return chain(*tasks, app=app).apply_async(args)

    def run_chord(header: Mapping[str, Any], body: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        return chord(group(header, app=app), body, app=app).apply_async(args)

    for name, fn in (("celery.map", run_map), ("celery.starmap", run_starmap), ("celery.chunks", run_chunks),
                     ("celery.group", run_group), ("celery.chain", run_chain), ("celery.chord", run_chord)):  # fmt: skip
        app.task(name=name, typing=False)(fn)


def task_map(task: Task[Any, Any], it: Iterable[Any]) -> xmap:
    return xmap(task.s(), it, app=task.app)


def task_starmap(task: Task[Any, Any], it: Iterable[Sequence[Any]]) -> xstarmap:
    return xstarmap(task.s(), it, app=task.app)


def task_chunks(task: Task[Any, Any], it: Iterable[Sequence[Any]], n: int) -> chunks:
    return chunks(task.s(), it, n, app=task.app)
