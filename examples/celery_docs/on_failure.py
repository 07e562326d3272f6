"""Celery docs, "Tasks > Handlers": a custom Task base class whose ``on_failure`` reports."""

from taskq import Celery, Task  # was: from celery import Celery, Task

app = Celery("on_failure", broker="redis://localhost:6379/0", backend="redis://localhost:6379/0")


class MyTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        print(f"{task_id!r} failed: {exc!r}")


@app.task(base=MyTask)
def add(x, y):
    raise KeyError()
