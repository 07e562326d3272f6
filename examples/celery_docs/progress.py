"""Celery docs, "Tasks > Custom states": ``upload_files`` reports PROGRESS with its meta."""

import time

from taskq import Celery  # was: from celery import Celery

app = Celery("progress", broker="redis://localhost:6379/0", backend="redis://localhost:6379/0")


def upload(file):
    """The slow part; a real task would send the file somewhere."""
    time.sleep(0.2)


@app.task(bind=True)
def upload_files(self, filenames):
    for i, file in enumerate(filenames):
        if not self.request.called_directly:
            self.update_state(state="PROGRESS", meta={"current": i, "total": len(filenames)})
        upload(file)
    return len(filenames)
