"""The quickstart app: two tasks, no server needed.

With no broker configured, taskq keeps its queue and results in ``taskq.sqlite3`` in the
current directory, so run the worker and the client from the same directory. Set
``TASKQ_BROKER_URL``/``TASKQ_RESULT_BACKEND`` (or Celery's ``CELERY_BROKER_URL``/
``CELERY_RESULT_BACKEND``) to use Redis or RabbitMQ instead, with no code change.
"""

from taskq import Celery

app = Celery("proj")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def divide(x: float, y: float) -> float:
    return x / y
