"""Run every example through a worker in this process and print what a client sees.

    python run_all.py                                # memory://, nothing to install
    TASKQ_BROKER_URL=redis://localhost:6379/0 \
    TASKQ_RESULT_BACKEND=redis://localhost:6379/0 python run_all.py

The environment variables win over the URLs in the modules, as CELERY_BROKER_URL does in Celery.
The demo shortens the documented delays (3 minutes by default) to a fraction of a second.
"""

import os
import sys
import threading
import time
from contextlib import contextmanager

os.environ.setdefault("TASKQ_BROKER_URL", "memory://")
os.environ.setdefault("TASKQ_RESULT_BACKEND", "memory://")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import autoretry
import on_failure
import progress
import retry_twitter
from fake_twitter import Twitter

from taskq.worker.worker import Worker


@contextmanager
def worker(app):
    """A worker in a thread of this process (``taskq -A module worker`` does the same)."""
    w = Worker(app, pool="threads", concurrency=2)
    thread = threading.Thread(target=w.start, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        yield w
    finally:
        w.stop()
        thread.join(10)


def main():
    Twitter.reset(failures=2)
    retry_twitter.send_twitter_status.default_retry_delay = 0.2
    with worker(retry_twitter.app):
        result = retry_twitter.send_twitter_status.delay("oauth-token", "Hello from taskq")
        result.get(timeout=30)
        print("send_twitter_status:", result.state, "sent:", Twitter.sent)

    Twitter.reset(failures=2)
    autoretry.refresh_timeline.default_retry_delay = 0.2
    autoretry.refresh_timeline_backoff.retry_backoff_max = 1
    with worker(autoretry.app):
        print("refresh_timeline:", autoretry.refresh_timeline.delay("ask").get(timeout=30))
        Twitter.reset(failures=2)
        started = time.monotonic()
        timeline = autoretry.refresh_timeline_backoff.delay("ask").get(timeout=30)
        print(f"refresh_timeline_backoff: {timeline} after {time.monotonic() - started:.1f}s")

    with worker(progress.app):
        result = progress.upload_files.delay(["a.txt", "b.txt", "c.txt"])
        while not result.ready():
            print("upload_files:", result.state, result.info)
            time.sleep(0.15)
        print("upload_files:", result.state, result.get())

    with worker(on_failure.app):
        result = on_failure.add.delay(2, 2)
        try:
            result.get(timeout=30)
        except KeyError as exc:
            print("add raised", repr(exc), "state", result.state)


if __name__ == "__main__":
    main()
