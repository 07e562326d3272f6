"""The tasks of Celery's canvas guide ("Canvas: Designing Work-flows"), with the import swapped.

Run a worker from this directory:

    taskq -A tasks worker -l info

``TASKQ_BROKER_URL`` / ``TASKQ_RESULT_BACKEND`` (or ``CELERY_*``) override the URLs below, as
``CELERY_BROKER_URL`` does in Celery. Chords need a result backend that can count them: Redis
(or SQLite, memory), not ``rpc://``.
"""

import os
import tempfile

from taskq import Celery

app = Celery("tasks", broker="redis://localhost:6379/0", backend="redis://localhost:6379/0")
app.conf.task_default_queue = os.environ.get("CANVAS_GUIDE_QUEUE", "celery")

# where log_error writes (the guide writes to /var/errors)
ERRORS = os.environ.get("CANVAS_GUIDE_ERRORS", os.path.join(tempfile.gettempdir(), "canvas-guide-errors"))


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    return sum(numbers)


@app.task
def tsum(numbers):
    return sum(numbers)


@app.task
def raising_task():
    raise KeyError("something something")


@app.task
def reset_buffers():
    return "buffers reset"


@app.task
def log_error(request, exc, traceback):
    """A new-style errback: Celery calls it in the worker with the failed task's request."""
    os.makedirs(ERRORS, exist_ok=True)
    with open(os.path.join(ERRORS, request.id), "a") as fh:
        print(f"--\n\n{request.id} {exc!r} {traceback}", file=fh)
