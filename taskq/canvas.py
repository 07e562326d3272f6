"""Signatures: a task call written down, to be sent later or elsewhere.

A signature is a plain dict with Celery's six keys (``task``, ``args``, ``kwargs``,
``options``, ``subtask_type``, ``immutable``), so it travels in messages (``link``,
``link_error``, ``embed.chain``) exactly as Celery's does and a Celery worker can run it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskq import _state

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.result import AsyncResult as _AsyncResult
    from taskq.task import Task


class Signature(dict[str, Any]):
    """``add.s(2, 3)``: the task's name, arguments and send options, as one dict."""

    def __init__(
        self,
        task: str | Task[Any, Any] | Mapping[str, Any] | None = None,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        type: Task[Any, Any] | None = None,  # noqa: A002 - Celery's keyword
        subtask_type: str | None = None,
        immutable: bool = False,
        app: App | None = None,
        **extra_options: Any,
    ) -> None:
        self._app = app
        self._type = type
        if isinstance(task, Mapping):  # a signature dict from a message
            super().__init__(task)
            self.setdefault("options", {})
            return
        name = task if isinstance(task, str) or task is None else task.name
        if task is not None and not isinstance(task, str):
            self._type = task
        super().__init__(
            task=name,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            options={**(options or {}), **extra_options},
            subtask_type=subtask_type,
            immutable=immutable,
        )

    # -- fields -----------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return str(self["task"])

    name = task

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self.get("args") or ())

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.get("kwargs") or {})

    @property
    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = self["options"]
        return options

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def app(self) -> App:
        if self._app is not None:
            return self._app
        if self._type is not None:
            return self._type.app
        return _state.current_app()

    @property
    def type(self) -> Task[Any, Any]:
        """The registered task (looked up by name in the app when not given)."""
        return self._type or self.app.tasks[self.task]

    @property
    def id(self) -> str | None:
        """The task id this signature will run under, once frozen."""
        task_id: str | None = self.options.get("task_id")
        return task_id

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Any = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        """Fix the task id now (and group/chord membership), so a result exists before sending."""
        opts = self.options
        opts["task_id"] = _id or opts.get("task_id") or str(uuid.uuid4())
        opts.setdefault("reply_to", self.app.thread_oid)
        for key, value in (("group_id", group_id), ("chord", chord), ("root_id", root_id),
                           ("parent_id", parent_id), ("group_index", group_index)):  # fmt: skip
            if value is not None:
                opts[key] = value
        return self.AsyncResult(opts["task_id"])

    def AsyncResult(self, task_id: str) -> _AsyncResult[Any]:  # noqa: N802 - Celery's name
        from taskq.result import AsyncResult

        return AsyncResult(task_id, app=self.app, task_name=self.task)

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        """``a | b``: a chain; ``group | b``: a chord (Celery's rules)."""
        if not isinstance(other, Signature):
            return NotImplemented
        from taskq.workflows import chain, chord, group

        if isinstance(self, group):
            return chord(self, other, app=self._app)
        left = self.tasks if isinstance(self, chain) else [self]
        right = other.tasks if isinstance(other, chain) else [other]
        return chain(*left, *right, app=self._app)

    def __invert__(self) -> Any:
        """``~sig``: send it and wait for its value (Celery's shortcut)."""
        return self.apply_async().get()

    def __repr__(self) -> str:
        args = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task}({args}){'!' if self.immutable else ''}"

    # -- building ---------------------------------------------------------------------------
    def _merge(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """Partial application: call-time args go first, unless the signature is immutable."""
        merged_options = {**self.options, **options}
        if self.immutable:
            return self.args, self.kwargs, merged_options
        return tuple(args or ()) + self.args, {**self.kwargs, **(kwargs or {})}, merged_options

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature:
        args, kwargs, options = self._merge(args, kwargs, options)
        return Signature(
            self.task, args, kwargs, options, type=self._type, app=self._app,
            subtask_type=self.get("subtask_type"), immutable=self.immutable,
        )  # fmt: skip

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Add send options in place (``sig.set(queue="q2", countdown=10)``)."""
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self["immutable"] = immutable

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run ``callback`` with this task's result when it succeeds."""
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run ``errback`` when this task fails."""
        self.options.setdefault("link_error", []).append(errback)
        return errback

    def on_error(self, errback: Mapping[str, Any]) -> Signature:
        """``link_error`` that returns this signature, for chaining: ``add.s(2, 2).on_error(e.s()).delay()``."""
        self.link_error(errback)
        return self

    # -- calling ----------------------------------------------------------------------------
    def apply_async(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Any:
        args, kwargs, options = self._merge(args, kwargs, options)
        task = self._type or self.app.tasks.get(self.task)
        if task is not None:
            return task.apply_async(args, kwargs, **options)
        return self.app.send_task(self.task, args, kwargs, **options)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Any:
        """Run here, as ``Task.apply`` does."""
        args, kwargs, options = self._merge(args, kwargs, options)
        return self.type.apply(args, kwargs, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task function here with the partial arguments merged in."""
        args, kwargs, _ = self._merge(args, kwargs, {})
        return self.type(*args, **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: App | None = None) -> Signature:
        """A signature from its dict form, of the kind ``subtask_type`` names (chain, group...)."""
        return from_dict(data, app)


# subtask_type -> class; filled in by taskq.workflows (chain, group, chord)
SUBTASK_TYPES: dict[str, type[Signature]] = {}


def from_dict(data: Mapping[str, Any], app: App | None = None) -> Signature:
    if isinstance(data, Signature) and type(data) is not Signature:
        data = dict(data)
    if not SUBTASK_TYPES:
        import taskq.workflows  # noqa: F401 - registers the composite kinds
    cls = SUBTASK_TYPES.get(data.get("subtask_type") or "", Signature)
    return cls(data, app=app)


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """A Signature from a name, a task, or a signature dict (as received in a message)."""
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, Mapping):
        return from_dict(varies, app=kwargs.get("app"))
    return Signature(varies, *args, **kwargs)


def maybe_signature(value: Any, app: App | None = None) -> Signature | None:
    if value is None:
        return None
    if isinstance(value, Signature):
        return value
    return from_dict(value, app=app)
