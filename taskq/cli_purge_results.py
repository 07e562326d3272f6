"""``taskq purge-results``: delete expired results now, what ``celery.backend_cleanup`` does daily.

Stores without their own expiry (the SQL database backends, SQLite) keep every result until
something deletes it; beat sends ``celery.backend_cleanup`` at 4 a.m. for that, as Celery's
beat does, and this command runs the same clean-up from a shell or a cron job, without a worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from taskq.cli_common import EX_UNAVAILABLE, CommandError, say
from taskq.exceptions import BackendError, DisabledBackend, OperationalError

if TYPE_CHECKING:
    from taskq.cli import Settings


@click.command("purge-results")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0, min_open=True),
    help="Delete results done more than this many seconds ago (default: result_expires).",
)
@click.pass_obj
def purge_results(settings: Settings, older_than: float | None) -> None:
    """Delete the results whose time is up from the result backend."""
    app = settings.app
    backend = app.backend
    try:
        if hasattr(backend, "purge_expired"):
            deleted = backend.purge_expired(older_than)
            say(", ".join(f"{count} {what}" for what, count in deleted.items()) + " deleted.")
        elif older_than is not None:
            raise CommandError(f"{type(backend).__name__} cannot purge by age: omit --older-than")
        else:
            backend.cleanup()
            say("Expired results deleted.")
    except DisabledBackend as exc:
        raise CommandError(str(exc)) from None
    except (BackendError, OperationalError) as exc:  # the backends name their masked URL
        raise CommandError(f"cannot purge results: {exc}", EX_UNAVAILABLE) from None
