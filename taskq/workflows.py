"""Composite signatures: chain, group, chord — encoded as Celery encodes them.

Each is a ``Signature`` of a built-in task (``celery.chain``/``celery.group``/``celery.chord``)
whose ``kwargs`` hold the parts, so a workflow survives a trip through a message and a Celery
worker can continue one that taskq started (and the reverse):

- chain: only the first step is sent; the rest ride along reversed in ``embed.chain`` and each
  worker sends the next step with the previous result prepended to its arguments;
- group: one message per member, each with the group id and its index;
- chord: the header is a group whose members carry the body in ``embed.chord``; the result
  backend counts finished members and the last one sends the body with all results.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from taskq.canvas import SUBTASK_TYPES, Signature, from_dict
from taskq.exceptions import ChordError

if TYPE_CHECKING:
    from taskq.app import App

Sig = Signature | Mapping[str, Any]


def _is_dict_form(args: tuple[Any, ...], name: str) -> bool:
    return len(args) == 1 and isinstance(args[0], Mapping) and args[0].get("task") == name


def _sigs(items: Iterable[Sig], app: App | None) -> list[Signature]:
    return [item if isinstance(item, Signature) else from_dict(item, app) for item in items]


class _Composite(Signature):
    """Shared by chain, group and chord: ``kwargs`` holds the parts, not task arguments.

    Partial positional arguments collect in ``args`` and go to the first step (chain) or to
    every member (group, chord header); keyword arguments given when sending go the same way.
    """

    def _merge(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        merged_args = self.args if self.immutable else tuple(args or ()) + self.args
        return merged_args, dict(kwargs or {}), {**self.options, **options}

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> Signature:
        if kwargs:
            raise TypeError(
                f"{self.task}: partial keyword arguments are not supported on a {self['subtask_type']}"
            )
        merged_args, _, merged_options = self._merge(args, None, options)
        return from_dict({**self, "args": list(merged_args), "options": merged_options}, self._app)


class chain(_Composite):  # noqa: N801 - Celery's name
    """Run tasks one after another, each getting the previous one's result first."""

    def __init__(self, *tasks: Any, app: App | None = None, **options: Any) -> None:
        if _is_dict_form(tasks, "celery.chain"):
            super().__init__(tasks[0], app=app)
            return
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping) and isinstance(tasks[0], Iterable):
            tasks = tuple(tasks[0])  # chain([a, b]) as well as chain(a, b)
        steps = [dict(s) for s in _flatten(_sigs(tasks, app))]
        super().__init__("celery.chain", (), {"tasks": steps}, options, subtask_type="chain", app=app)
        self._app = app or next(
            (s._app or (s._type.app if s._type else None) for s in _sigs(tasks, app)), None
        )

    @property
    def tasks(self) -> list[Signature]:
        return _sigs(self.kwargs.get("tasks", ()), self._app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``chain(a, b)()`` sends the chain, as Celery's does (a task signature runs here)."""
        return self.apply_async(args, kwargs)

    def _prepared(self) -> list[Signature]:
        """Steps with ``group | task`` upgraded to a chord, as Celery does inside a chain."""
        steps, out = self.tasks, []
        while steps:
            step = steps.pop(0)
            if isinstance(step, group) and steps:
                step = chord(step, steps.pop(0), app=self._app)
            out.append(step)
        return out

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Any = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        """Fix every step's id; the chain's result is the last step's, linked to its parents.

        Group membership and a chord to report to belong to the last step: its result is the
        chain's result.
        """
        steps = self._prepared()
        if not steps:
            raise ValueError("a chain needs at least one step")
        # The chain's id (``_id``, or ``task_id`` given to the chain) is its last step's, as in Celery.
        last_id = _id or self.options.get("task_id")
        results = [step.freeze() for step in steps[:-1]] + [steps[-1].freeze(last_id)]
        for parent, child in itertools.pairwise(results):
            node = child  # a chord step's result already has its header as parent: link above that
            while node.parent is not None:
                node = node.parent
            node.parent = parent  # each result knows its parent: the chain walks back
        last = steps[-1].options
        for key, value in (("group_id", group_id), ("group_index", group_index), ("chord", chord)):
            if value is not None:
                last[key] = value
        self["kwargs"] = {**self.kwargs, "tasks": [dict(step) for step in steps]}
        self.options["task_id"] = results[-1].id
        return results[-1]

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> Any:  # fmt: skip
        args, kwargs, options = self._merge(args, kwargs, options)
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        membership = {k: options.pop(k) for k in ("group_id", "group_index", "chord") if k in options}
        result = self.freeze(options.pop("task_id", None), **membership)
        first, *rest = self.tasks
        inherited_chain = options.pop("chain", None) or []
        first.apply_async(args, kwargs, chain=[dict(step) for step in reversed(rest)] + list(inherited_chain) or None,
                          **options)  # fmt: skip
        return result

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:  # fmt: skip
        """Run every step here, in order (eager mode)."""
        first, *rest = self._prepared()
        result: Any = first.apply(args, kwargs, **options)
        for step in rest:
            result = step.apply((result.get(),))
        return result


class group(_Composite):  # noqa: N801
    """Run tasks in parallel; the result is a ``GroupResult`` of all of them."""

    def __init__(self, *tasks: Any, app: App | None = None, **options: Any) -> None:
        if _is_dict_form(tasks, "celery.group"):
            super().__init__(tasks[0], app=app)
            return
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping) and isinstance(tasks[0], Iterable):
            tasks = tuple(tasks[0])  # group(generator) as well as group(a, b)
        members = _sigs(tasks, app)
        super().__init__("celery.group", (), {"tasks": [dict(m) for m in members]}, options,
                         subtask_type="group", app=app)  # fmt: skip
        self._app = app or next((m._app or (m._type.app if m._type else None) for m in members), None)

    @property
    def tasks(self) -> list[Signature]:
        return _sigs(self.kwargs.get("tasks", ()), self._app)

    def __call__(self, *args: Any, **options: Any) -> Any:
        """``group(...)()`` sends the group, as Celery's does."""
        return self.apply_async(args, **options)

    def skew(self, start: float = 1.0, stop: float | None = None, step: float = 1.0) -> group:
        """Stagger the members: countdown ``start``, ``start + step``, ... up to ``stop`` (Celery's)."""
        tasks, countdown = self.tasks, float(start)
        for task in tasks:
            task.set(countdown=countdown)
            if not stop or countdown + step <= stop:
                countdown += step
        self["kwargs"] = {**self.kwargs, "tasks": [dict(t) for t in tasks]}
        return self

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> Any:  # fmt: skip
        from taskq.result import GroupResult

        args, kwargs, options = self._merge(args, kwargs, options)
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        group_id = options.pop("task_id", None) or str(uuid.uuid4())
        # Membership in an outer group means nothing for a nested group's own members.
        options.pop("group_id", None), options.pop("group_index", None)
        chord_body = options.pop("chord", None)
        results = []
        for index, member in enumerate(self.tasks):
            member_options = {**options, "group_id": group_id, "group_index": index}
            if chord_body is not None:
                if isinstance(member, group):
                    raise ChordError("a group nested directly in a chord header is not supported")
                member_options["chord"] = chord_body
            results.append(member.apply_async(args, kwargs, **member_options))
        return GroupResult(group_id, results, app=self.app)

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:  # fmt: skip
        from taskq.result import GroupResult

        group_id = options.pop("task_id", None) or str(uuid.uuid4())
        results = [member.apply(args, kwargs, **options) for member in self.tasks]
        return GroupResult(group_id, results, app=self.app)

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Any = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        """Fix the group id and every member's id, as Celery's ``group.freeze``.

        The group's options get ``task_id``, ``root_id`` and ``parent_id``; each member its
        ``task_id``, ``reply_to`` and ``group_index`` (its ``group_id`` is set when sent).
        """
        from taskq.result import GroupResult

        opts = self.options
        gid = opts.setdefault("task_id", _id or str(uuid.uuid4()))
        if group_id:
            opts["group_id"] = group_id
        if chord:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        root_id = opts.setdefault("root_id", root_id)
        parent_id = opts.setdefault("parent_id", parent_id)
        tasks = self.tasks
        results = [
            m.freeze(group_id=group_id, chord=chord, root_id=root_id, parent_id=parent_id, group_index=i)
            for i, m in enumerate(tasks)
        ]
        self["kwargs"] = {**self.kwargs, "tasks": [dict(m) for m in tasks]}  # keep the frozen ids
        return GroupResult(gid, results, app=self.app)


class chord(_Composite):  # noqa: N801
    """A header group, then a body called with the list of the header's results."""

    def __init__(
        self, header: Any = None, body: Sig | None = None, app: App | None = None, **options: Any
    ) -> None:
        if isinstance(header, Mapping) and header.get("task") == "celery.chord":
            super().__init__(header, app=app)
            return
        head = header if isinstance(header, group) else group(*_sigs(header or (), app), app=app)
        kwargs = {"kwargs": {}, "header": dict(head), "body": dict(body) if body is not None else None}
        super().__init__("celery.chord", (), kwargs, options, subtask_type="chord", app=app)
        body_app = None
        if isinstance(body, Signature):  # an empty header has no app: the body's then
            body_app = body._app or (body._type.app if body._type else None)
        self._app = app or head._app or body_app

    @property
    def header(self) -> group:
        return group(self.kwargs["header"], app=self._app)

    @property
    def body(self) -> Signature | None:
        body = self.kwargs.get("body")
        return from_dict(body, self._app) if body is not None else None

    def freeze(
        self,
        _id: str | None = None,
        group_id: str | None = None,
        chord: Any = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        group_index: int | None = None,
    ) -> Any:
        """Fix the header's ids (its group id is the chord's) and the body's, as Celery does.

        The chord's result is the body's, whose parent is the header's GroupResult. The body
        gets the chord's group id only when the chord runs (``apply_async``).
        """
        body = self.body
        if body is None:
            raise ValueError("a chord needs a body")
        header = self.header
        header_result = header.freeze(self.options.get("task_id"), root_id=root_id, parent_id=parent_id)
        self.options["task_id"] = header_result.id
        result = body.freeze(_id, group_id=group_id, chord=chord, root_id=root_id, group_index=group_index)
        node = result
        while node.parent is not None:
            node = node.parent
        node.parent = header_result
        self["kwargs"] = {**self.kwargs, "header": dict(header), "body": dict(body)}
        return result

    def __call__(self, body: Sig | None = None, **options: Any) -> Any:  # chord(header)(body)
        if body is None:  # (group | task)(): the chord's own body
            return self.apply_async(**options)
        return chord(self.header, body, app=self._app, **options).apply_async()

    def apply_async(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> Any:  # fmt: skip
        from taskq.result import GroupResult

        body = self.body
        if body is None:
            raise ValueError("a chord needs a body")
        args, kwargs, options = self._merge(args, kwargs, options)
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        group_id = options.pop("task_id", None) or str(uuid.uuid4())
        if options.get("chain"):
            body.options["chain"] = options.pop("chain")  # the rest of an outer chain follows the body
        body_result = body.freeze(group_id=group_id)
        # A chord inside a group or another chord's header: its body is the member that reports.
        for key in ("group_id", "group_index", "chord"):
            if key in options:
                body.options[key] = options.pop(key)
        header = self.header
        backend = self.app.backend
        if not header.tasks:  # nothing to wait for
            body.apply_async(([],))
            return body_result
        backend.ensure_chords_allowed()  # rpc:// and no backend refuse here, before sending
        # Each header member reports once: a chain through its last step, a chord through its body.
        if backend.supports_native_chord:
            backend.set_chord_size(group_id, len(header.tasks))
        header_result = header.apply_async(args, kwargs, task_id=group_id, chord=dict(body), **options)
        if not backend.supports_native_chord:
            from taskq.builtins import send_chord_unlock

            send_chord_unlock(self.app, header_result, body, countdown=1)
        body_result.parent = GroupResult(group_id, header_result.results, app=self.app)
        return body_result

    def apply(self, args: Sequence[Any] | None = None, kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Any:  # fmt: skip
        body = self.body
        if body is None:
            raise ValueError("a chord needs a body")
        values = self.header.apply(args, kwargs).join(propagate=True, disable_sync_subtasks=False)
        return body.apply((values,), **options)


def _flatten(steps: list[Signature]) -> list[Signature]:
    """A chain inside a chain is just more steps."""
    out: list[Signature] = []
    for step in steps:
        out.extend(_flatten(step.tasks) if isinstance(step, chain) else [step])
    return out


SUBTASK_TYPES.update(chain=chain, group=group, chord=chord)
