"""Celery docs, "Tasks > Retrying": ``send_twitter_status``, unchanged but for the import.

Run a worker with ``taskq -A retry_twitter worker -l info`` (Redis on localhost), or everything
in one process with ``python run_all.py``.
"""

from fake_twitter import Twitter

from taskq import Celery  # was: from celery import Celery

app = Celery("retry_twitter", broker="redis://localhost:6379/0", backend="redis://localhost:6379/0")


@app.task(bind=True)
def send_twitter_status(self, oauth, tweet):
    try:
        twitter = Twitter(oauth)
        twitter.update_status(tweet)
    except (Twitter.FailWhaleError, Twitter.LoginError) as exc:
        raise self.retry(exc=exc)


@app.task(bind=True, default_retry_delay=30 * 60)  # retry in 30 minutes.
def add(self, x, y):
    try:
        return something_raising(x, y)
    except Exception as exc:
        # overrides the default delay to retry after 1 minute
        raise self.retry(exc=exc, countdown=60)


def something_raising(x, y):
    if Twitter.failures > 0:
        Twitter.failures -= 1
        raise RuntimeError("temporary failure")
    return x + y
