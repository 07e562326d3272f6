"""Chords over any result store: count the header, send the body once, fail it cleanly.

Celery 5.7's protocol, written once for every store. Each finishing header task records its
part exactly once (keyed by ``<task id>:<group index>``, so a redelivered copy is not counted
twice); the part that completes the count takes a claim (``.c``, set-if-absent with a short
TTL) in the same atomic step, and only the claimer reads the parts, extends its claim, sends
the body (args ``[[r0, r1, ...]]`` in group_index order) and cleans up, leaving ``.c = "done"``
so a late copy cannot start the chord again. A claimer that dies lets its claim expire; the
redelivered header task then finds the count complete and claims it in turn.

Generic stores (memory, SQLite) keep, under ``celery-taskset-meta-<gid>``: ``.s`` the size,
``.t`` the size adjustment (``add_to_chord``), ``.n`` the counter, ``.j.<n>`` the n-th part,
``.j.<task_id>:<index>`` its dedupe mark, ``.c`` the claim, ``.r`` a refresh mark. Like Redis,
chord data lives ``chord_expires`` past the last part; to keep that O(1) per part, the ``.j.``
keys get 1.1 x that TTL and are all refreshed at most once per tenth of it (while ``.r`` lives).
Redis runs the protocol as Lua scripts on Celery's own keys (``redis_chord.py``), so Celery
workers can share a chord.
"""

from __future__ import annotations

import inspect
import logging
import math
import traceback as tb
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kombu.utils.encoding import bytes_to_str

from taskq import states
from taskq.exceptions import ChordError

if TYPE_CHECKING:
    from taskq.app import App
    from taskq.backend.base import ResultBackend
    from taskq.canvas import Signature
    from taskq.result import AsyncResult, GroupResult

logger = logging.getLogger("taskq.backend.chord")

DONE = "done"  # value of ``.c`` once the body was sent and the chord data removed


# -- settings -------------------------------------------------------------------------------
def _seconds(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.total_seconds() if hasattr(value, "total_seconds") else value)


def chord_expires(backend: ResultBackend) -> int:
    """TTL of chord keys: ``result_chord_expires``, else ``result_expires`` (0 = none)."""
    value = _seconds(backend.app.conf.get("result_chord_expires"))
    return int(backend.expires or 0) if value is None else int(value)


def chord_result_expires(backend: ResultBackend) -> int:
    """TTL of a chord's saved group: never shorter than ``result_expires`` (0 = none)."""
    expires = chord_expires(backend)
    if not expires or not backend.expires:
        return 0
    return int(max(expires, backend.expires))


def claim_ttls(app: App) -> tuple[int, int]:
    """(claim TTL, TTL of the "done" marker): ``max(5, 2 x join timeout)``, ``max(2 x claim, 300)``."""
    claim = max(5, int((app.conf.get("result_chord_join_timeout") or 5.0) * 2))
    return claim, int(max(claim * 2, 300))


def publish_claim_expires(app: App, initial: int, body: Signature) -> int:
    """How long the claim must last while the body is published with its retries (as 5.7)."""
    conf = app.conf
    default_policy = conf.get("task_publish_retry_policy") or {}
    policy = {**default_policy, **(body.options.get("retry_policy") or {})}
    retry = body.options.get("retry")
    retry = conf.get("task_publish_retry") if retry is None else retry
    retries = policy.get("max_retries", 3)
    if retries is None:
        retries = default_policy.get("max_retries", 3)
    retries = max(0, int(3 if retries is None else retries)) if retry else 0
    timeout = conf.get("broker_connection_timeout")
    if timeout is None:
        return initial * 2
    timeout = max(0.0, float(timeout))
    start, step = float(policy.get("interval_start", 0)), float(policy.get("interval_step", 0.2))
    maximum = float(policy.get("interval_max", 1))
    waits = sum(min(start + step * n, maximum) for n in range(retries))
    return max(initial, math.ceil((retries + 1) * timeout + waits + max(timeout, 1)))


def text(value: bytes | str | None) -> str | None:
    return None if value is None else str(bytes_to_str(value))


# -- parts ----------------------------------------------------------------------------------
def encode_part(backend: ResultBackend, task_id: str, state: str, result: Any, *extra: Any) -> bytes | str:
    """Celery's part encoding ``[1, task_id, state, result]`` (exceptions as stored in metas)."""
    return backend.encode([1, task_id, state, backend.prepare_result(state, result), *extra])


def unpack_part(backend: ResultBackend, part: Sequence[Any]) -> Any:
    """The value of one decoded part; a failed or revoked one fails the chord (ChordError)."""
    _, task_id, state, value = part[:4]
    if state in states.EXCEPTION_STATES:
        value = backend.exception_from_meta({"result": value})
    if state in states.PROPAGATE_STATES:
        error = ChordError(f"Dependency {task_id} raised {value!r}")
        if isinstance(value, Exception):
            error.__cause__ = value
        raise error
    return value


def join(results: Sequence[AsyncResult[Any] | GroupResult], timeout: float | None) -> list[Any]:
    """Values of a restored header (nested groups stay nested); the first failure raises."""
    from taskq.result import GroupResult

    values: list[Any] = []
    for result in results:
        if isinstance(result, GroupResult):
            values.append(join(result.results, timeout))
        else:
            values.append(result.get(timeout=timeout, propagate=True, disable_sync_subtasks=False))
    return values


# -- completing -----------------------------------------------------------------------------
def complete(
    backend: ResultBackend,
    request: Any,
    token: str,
    read_parts: Callable[[], list[Any]],
    extend_claim: Callable[[str, int], bool],
    cleanup: Callable[[str, int], bool],
    drop_size: Callable[[], None],
) -> None:
    """What the claimer does: read the header's values, send the body once, clean up.

    A failed part (or an unreadable header) fails the body with ChordError instead; then only
    the size is dropped, so a late copy of a header task cannot fail the chord again.
    """
    from taskq.canvas import Signature

    app, gid = backend.app, request.group
    body = Signature.from_dict(request.chord, app)
    claim_ttl, done_ttl = claim_ttls(app)
    try:
        header = backend.restore_group(gid)
        if header is not None:  # saved by the client: a header with nested groups
            values = join(header.results, app.conf.get("result_chord_join_timeout"))
        else:
            values = [unpack_part(backend, part) for part in read_parts()]
        if not extend_claim(token, publish_claim_expires(app, claim_ttl, body)):
            logger.warning("Chord callback for %r not published: dispatch claim is no longer ours", gid)
            return
        try:
            send_body(body, request, values)
        except Exception as exc:
            logger.exception("Chord callback for %r raised: %r", gid, exc)
            fail_body(backend, body, ChordError(f"Callback error: {exc!r}"))
        finally:
            if not cleanup(token, done_ttl):
                logger.warning("Chord claim for %r was lost before cleanup; data left to expire", gid)
    except ChordError as exc:
        logger.error("Chord %r raised: %r", gid, exc)
        try:
            fail_body(backend, body, exc)
        finally:
            drop_size()
    except Exception as exc:
        logger.exception("Chord %r raised: %r", gid, exc)
        try:
            fail_body(backend, body, ChordError(f"Join error: {exc!r}"))
        finally:
            drop_size()


def send_body(body: Signature, request: Any, values: list[Any]) -> None:
    """The body with the header's values as its one argument; parent = last header task."""
    root_id = body.options.get("root_id") or getattr(request, "root_id", None)
    options: dict[str, Any] = {"parent_id": getattr(request, "id", None)}
    if root_id:
        options["root_id"] = root_id
    body.apply_async((values,), **options)


# -- failing --------------------------------------------------------------------------------
def body_id(body: Signature) -> str:
    """The id the body's result is read under (a chain's is its last task's)."""
    task_id = body.options.get("task_id")
    tasks = (body.get("kwargs") or {}).get("tasks")
    if not task_id and body.get("subtask_type") == "chain" and tasks:
        task_id = (tasks[-1].get("options") or {}).get("task_id")
    if not task_id:
        task_id = body.options["task_id"] = str(uuid.uuid4())
    return str(task_id)


def fail_body(backend: ResultBackend, body: Signature, exc: BaseException) -> None:
    """Celery's ``chord_error_from_stack``: errbacks of the body, then its result is FAILURE.

    A group body fails every member (each with its own and the group's errbacks) with the
    original exception; a chain after the body (``options.chain``) fails with it too.
    """
    from taskq.canvas import Signature

    app = backend.app
    trace = "".join(tb.format_exception(exc)) if exc.__traceback__ is not None else None
    if body.get("subtask_type") == "group":
        original = exc.__cause__ if isinstance(exc, ChordError) and exc.__cause__ else exc
        group_errbacks = list(body.options.get("link_error") or ())
        for member in (body.get("kwargs") or {}).get("tasks") or ():
            sig = Signature.from_dict(member, app)
            if not sig.options.get("task_id"):
                continue
            errbacks = [*(sig.options.get("link_error") or ()), *group_errbacks]
            call_errbacks(app, sig, sig.options["task_id"], errbacks, original)
            backend.mark_as_failure(sig.options["task_id"], original, trace)
        if body.options.get("task_id"):
            backend.mark_as_failure(body.options["task_id"], original, trace)
    else:
        task_id = body_id(body)
        call_errbacks(app, body, task_id, list(body.options.get("link_error") or ()), exc)
        backend.mark_as_failure(task_id, exc, trace)
    fail_chain(backend, body.options.get("chain"), exc, trace)


def call_errbacks(app: App, body: Signature, task_id: str, errbacks: list[Any], exc: BaseException) -> None:
    """New-style errbacks ``(request, exc, traceback)`` run here; old ones get the task id."""
    from taskq.canvas import Signature
    from taskq.task import Context

    request = Context(**{"task": "unknown", **dict(body), "id": task_id, "errbacks": errbacks})
    request.delivery_info = {}
    root_id = body.options.get("root_id") or task_id
    for errback in errbacks:
        sig = Signature.from_dict(errback, app)
        try:
            handler = app.tasks.get(sig.task)
            if handler is not None and _arity(handler.run, sig) > 1:
                sig(request, exc, None)
            else:
                sig.apply_async((task_id,), parent_id=task_id, root_id=root_id)
        except Exception:
            logger.exception("Errback %r of chord body %s raised", sig.task, task_id)


def _arity(fun: Callable[..., Any], sig: Signature) -> int:
    """Positional arguments ``fun`` still takes once the signature's own are bound."""
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):
        return 0
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 99
    count = sum(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in sig.kwargs for p in params
    )
    return count - (0 if sig.immutable else len(sig.args))


def fail_chain(backend: ResultBackend, chain: Any, exc: BaseException, trace: str | None) -> None:
    """Mark the tasks chained after the body FAILURE (a chord member also returns its part)."""
    from taskq.task import Context

    pending = list(chain or ())
    while pending:
        step = dict(pending.pop(0))
        options = step.get("options") or {}
        request = Context(
            **{**step, **options, "id": options.get("task_id"), "group": options.get("group_id")}
        )
        if request.id is None:
            continue
        if "chord" in options and backend.get_task_meta(request.id)["status"] in states.PROPAGATE_STATES:
            continue  # already failed: its part was returned then
        backend.mark_as_failure(request.id, exc, trace, request=request)
        if "chord" in options:
            backend.on_chord_part_return(request, states.FAILURE, exc)
        if step.get("subtask_type") == "chord" and (step.get("kwargs") or {}).get("body") is not None:
            pending.append(step["kwargs"]["body"])


# -- the generic protocol (stores with ``_atomic``/``_incr``/``_add``) ---------------------------
def part_return(backend: ResultBackend, request: Any, state: str, result: Any) -> None:
    """Record one header part; the caller that completes the count sends the body."""
    task_id, gid, index = request.id, request.group, request.group_index
    if not task_id or not gid:
        return
    key = backend.group_key_for(gid)
    ttl, group_ttl = chord_expires(backend) or None, chord_result_expires(backend)
    claim_ttl, _ = claim_ttls(backend.app)
    token = uuid.uuid4().hex
    seen = f"{key}.j.{task_id}:{'+inf' if index is None else int(index)}"
    with backend._atomic():
        if text(backend._get(f"{key}.c")) == DONE:
            return  # finished already: a late copy must not start the chord again
        if backend._get(seen) is None:
            count = backend._incr(f"{key}.n", ttl)
            part_ttl = ttl * 1.1 if ttl else None
            backend._set(f"{key}.j.{count}", encode_part(backend, task_id, state, result, index), part_ttl)
            backend._set(seen, str(count), part_ttl)
        else:
            count = int(text(backend._get(f"{key}.n")) or 0)
        if ttl:
            if backend._add(f"{key}.r", "1", ttl / 10):
                backend._expire_prefix(f"{key}.j.", ttl * 1.1)
            for suffix in (".n", ".s", ".t"):
                backend._expire(key + suffix, ttl)
            if group_ttl:
                backend._expire(key, group_ttl)
        size = text(backend._get(f"{key}.s"))
        total = None if size is None else int(size) + int(text(backend._get(f"{key}.t")) or 0)
        if count != total or not backend._add(f"{key}.c", token, claim_ttl):
            return

    def read_parts() -> list[Any]:
        parts = []
        for n in range(1, count + 1):
            raw = backend._get(f"{key}.j.{n}")
            if raw is None:
                raise ChordError(f"part {n} of chord {gid} is missing (expired?)")
            parts.append(backend.decode(raw))
        parts.sort(key=lambda part: math.inf if part[4] is None else part[4])
        return parts

    def extend_claim(token: str, seconds: int) -> bool:
        with backend._atomic():
            current = text(backend._get(f"{key}.c"))
            if current == token:
                backend._expire(f"{key}.c", seconds)
                return True
            if current is None and backend._get(f"{key}.s") is not None:
                return backend._add(f"{key}.c", token, seconds)
            return False

    def cleanup(token: str, done_ttl: int) -> bool:
        with backend._atomic():
            if text(backend._get(f"{key}.c")) != token:
                return False
            backend._delete_prefix(f"{key}.j.")
            for suffix in (".n", ".s", ".t", ".r"):
                backend._delete(key + suffix)
            backend._set(f"{key}.c", DONE, done_ttl)
            return True

    complete(backend, request, token, read_parts, extend_claim, cleanup, lambda: backend._delete(f"{key}.s"))


def restore_group(backend: ResultBackend, group_id: str, raw: bytes | str | None) -> GroupResult | None:
    """A saved group from its stored ``{"result": <result tuple>}``; None when absent."""
    from taskq.exceptions import BackendGetMetaError
    from taskq.result import GroupResult, result_from_tuple

    if raw is None:
        return None
    meta = backend.decode(raw)
    restored = result_from_tuple(meta["result"], backend.app) if isinstance(meta, dict) else None
    if not isinstance(restored, GroupResult):
        raise BackendGetMetaError(f"group {group_id} in {backend.masked_url} is malformed: {meta!r:.200}")
    return restored
