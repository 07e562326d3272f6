# ruff: noqa: B905 - the guide's own code: zip() as it writes it
"""Celery's canvas guide, section by section, against a running worker (``taskq -A tasks worker``).

    python guide.py

Each example is the guide's own code with ``from taskq import ...`` for ``from celery import
...``; the value the guide shows is checked, and every line is printed as a session would show
it. Exits non-zero on the first difference.
"""

import os
import sys
import time

from tasks import ERRORS, add, log_error, mul, raising_task, reset_buffers, tsum, xsum

from taskq import chain, chord, group, signature
from taskq.exceptions import ChordError

TIMEOUT = 30


def show(expression, value, expected=...):
    print(f">>> {expression}\n{value!r}")
    if expected is not ... and value != expected:
        sys.exit(f"guide example {expression!r} gave {value!r}, expected {expected!r}")


def signatures():
    print("\n# Signatures")
    s = signature("tasks.add", args=(2, 2), countdown=10)
    show("signature('tasks.add', args=(2, 2), countdown=10)", s)
    show("add.signature((2, 2), countdown=10)", add.signature((2, 2), countdown=10), s)
    show("add.s(2, 2)", add.s(2, 2))
    s = add.signature((2, 2), {"debug": True}, countdown=10)
    show("s.args", s.args, (2, 2))
    show("s.kwargs", s.kwargs, {"debug": True})
    show("s.options", s.options, {"countdown": 10})
    show("add.s(2, 2)()", add.s(2, 2)(), 4)  # calls the function here
    show("add.delay(2, 2).get()", add.delay(2, 2).get(timeout=TIMEOUT), 4)
    show("add.s(2, 2).delay().get()", add.s(2, 2).delay().get(timeout=TIMEOUT), 4)
    show(
        "add.s(2, 2).apply_async(countdown=1).get()",
        add.s(2, 2).apply_async(countdown=1).get(timeout=TIMEOUT),
        4,
    )


def partials():
    print("\n# Partials")
    partial = add.s(2)  # incomplete signature
    show("partial.delay(4).get()  # 4 + 2", partial.delay(4).get(timeout=TIMEOUT), 6)
    show("partial.apply_async((4,)).get()", partial.apply_async((4,)).get(timeout=TIMEOUT), 6)
    s = add.signature((2, 2), countdown=10)
    show(
        "s.apply_async(countdown=1).get()  # countdown is now 1",
        s.apply_async(countdown=1).get(timeout=TIMEOUT),
        4,
    )
    show("s.clone(args=(4,), kwargs={'debug': True})", s.clone(args=(4,), kwargs={"debug": True}))


def immutability():
    print("\n# Immutability")
    res = add.apply_async((2, 2), link=reset_buffers.si())
    show("add.apply_async((2, 2), link=reset_buffers.si()).get()", res.get(timeout=TIMEOUT), 4)
    show("add.si(2, 2)", add.si(2, 2))
    res = (add.si(2, 2) | add.si(4, 4) | add.si(8, 8))()
    show("res.get()", res.get(timeout=TIMEOUT), 16)
    show("res.parent.get()", res.parent.get(timeout=TIMEOUT), 8)
    show("res.parent.parent.get()", res.parent.parent.get(timeout=TIMEOUT), 4)


def callbacks():
    print("\n# Callbacks")
    res = add.apply_async((2, 2), link=add.s(16))
    show("res.get()", res.get(timeout=TIMEOUT), 4)
    child = wait_for_children(res)
    show("res.children[0].get()  # 4 + 16", child.get(timeout=TIMEOUT), 20)


def chains():
    print("\n# Chains")
    res = chain(add.s(4, 4), mul.s(8), mul.s(10))()
    show("chain(add.s(4, 4), mul.s(8), mul.s(10))().get()", res.get(timeout=TIMEOUT), 640)
    res = chain(add.s(2, 2), add.s(4), add.s(8))()
    show("chain(add.s(2, 2), add.s(4), add.s(8))().get()", res.get(timeout=TIMEOUT), 16)
    show("res.parent.get()", res.parent.get(timeout=TIMEOUT), 8)
    res = (add.s(2, 2) | add.s(4) | add.s(8))()
    show("(add.s(2, 2) | add.s(4) | add.s(8))().get()", res.get(timeout=TIMEOUT), 16)
    c1 = add.s(4) | mul.s(8)
    show("c1(16).get()  # (16 + 4) * 8", c1(16).get(timeout=TIMEOUT), 160)
    c2 = add.s(4, 16) | mul.s(2) | (add.s(4) | mul.s(8))
    show("c2().get()", c2().get(timeout=TIMEOUT), 352)


def groups():
    print("\n# Groups")
    show("group(add.s(i, i) for i in range(10))().get()",
         group(add.s(i, i) for i in range(10))().get(timeout=TIMEOUT), [0, 2, 4, 6, 8, 10, 12, 14, 16, 18])  # fmt: skip
    job = group([add.s(2, 2), add.s(4, 4), add.s(8, 8), add.s(16, 16), add.s(32, 32)])
    result = job.apply_async()
    show("result.get()", result.get(timeout=TIMEOUT), [4, 8, 16, 32, 64])
    show("result.ready()  # have all subtasks completed?", result.ready(), True)
    show("result.successful()  # were all subtasks successful?", result.successful(), True)
    show("result.completed_count()", result.completed_count(), 5)
    result.save()
    restored = type(result).restore(result.id)
    show("GroupResult.restore(result.id).get()", restored.get(timeout=TIMEOUT), [4, 8, 16, 32, 64])


def chords():
    print("\n# Chords")
    callback = tsum.s()
    header = [add.s(i, i) for i in range(100)]
    result = chord(header)(callback)
    show("chord(header)(callback).get()", result.get(timeout=TIMEOUT), 9900)
    show("(group(add.s(i, i) for i in range(100)) | tsum.s())().get()",
         (group(add.s(i, i) for i in range(100)) | tsum.s())().get(timeout=TIMEOUT), 9900)  # fmt: skip
    c = chord([add.s(4, 4), raising_task.s(), add.s(8, 8)])
    result = c(tsum.s())
    try:
        result.get(timeout=TIMEOUT)
    except ChordError as exc:
        show("result.get()  # raises", exc)
        if "raised KeyError('something something')" not in str(exc):
            sys.exit(f"unexpected ChordError: {exc}")
    else:
        sys.exit("a chord with a failing header task did not raise ChordError")


def map_starmap_chunks():
    print("\n# Map & Starmap, Chunks")
    show(
        "~xsum.map([list(range(10)), list(range(100))])",
        ~xsum.map([list(range(10)), list(range(100))]),
        [45, 4950],
    )
    show("~add.starmap(zip(range(10), range(10)))", ~add.starmap(zip(range(10), range(10))),
         [0, 2, 4, 6, 8, 10, 12, 14, 16, 18])  # fmt: skip
    res = add.chunks(zip(range(100), range(100)), 10)()
    show("add.chunks(zip(range(100), range(100)), 10)().get()[0]", res.get(timeout=TIMEOUT)[0],
         [0, 2, 4, 6, 8, 10, 12, 14, 16, 18])  # fmt: skip
    show("len(res.get())", len(res.get(timeout=TIMEOUT)), 10)
    g = add.chunks(zip(range(100), range(100)), 10).group()
    show("len(g.tasks)", len(g.tasks), 10)
    show("g().get()[-1]", g().get(timeout=TIMEOUT)[-1], [180, 182, 184, 186, 188, 190, 192, 194, 196, 198])


def error_handling():
    print("\n# Error handling: link_error / on_error")
    res = raising_task.s().on_error(log_error.s()).delay()
    try:
        res.get(timeout=TIMEOUT)
    except KeyError as exc:
        show("raising_task.s().on_error(log_error.s()).delay().get()  # raises", exc)
    # The worker stores the failure first and then calls the errback (as Celery's does): wait for it.
    path = os.path.join(ERRORS, res.id)
    deadline = time.monotonic() + TIMEOUT
    logged = ""
    while "KeyError" not in logged:
        if time.monotonic() > deadline:
            sys.exit(f"log_error did not write {path}")
        time.sleep(0.05)
        if os.path.exists(path):
            with open(path) as fh:
                logged = fh.read()
    show("'KeyError' in open(path).read()", "KeyError('something something')" in logged, True)
    res = add.apply_async((2, 2), link_error=log_error.s())
    show("add.apply_async((2, 2), link_error=log_error.s()).get()", res.get(timeout=TIMEOUT), 4)


def wait_for_children(result):
    deadline = time.monotonic() + TIMEOUT
    while not result.children:  # the callback is listed once the parent's result is stored
        if time.monotonic() > deadline:
            sys.exit("the link callback did not show up in res.children")
        time.sleep(0.05)
        result = type(result)(result.id)
    return result.children[0]


def main():
    for section in (signatures, partials, immutability, callbacks, chains, groups, chords, map_starmap_chunks,
                    error_handling):  # fmt: skip
        section()
    print("\nall canvas guide examples gave the guide's values")


if __name__ == "__main__":
    main()
