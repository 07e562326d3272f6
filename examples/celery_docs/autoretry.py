"""Celery docs, "Tasks > Automatic retry for known exceptions", unchanged but for the import."""

from fake_twitter import Twitter, twitter

from taskq import Celery  # was: from celery import Celery

app = Celery("autoretry", broker="redis://localhost:6379/0", backend="redis://localhost:6379/0")


@app.task(autoretry_for=(Twitter.FailWhaleError,), retry_kwargs={"max_retries": 5})
def refresh_timeline(user):
    return twitter.refresh_timeline(user)


# With exponential back-off: 1 s, 2 s, 4 s ... (jittered), at most retry_backoff_max seconds.
@app.task(autoretry_for=(Twitter.FailWhaleError,), retry_backoff=True)
def refresh_timeline_backoff(user):
    return twitter.refresh_timeline(user)
