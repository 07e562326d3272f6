"""kombu's SQLAlchemy transport (``sqla+postgresql://...``, ``sqla+sqlite:///...``), usable with options.

kombu passes every broker transport option except its table names to ``create_engine``, so
``polling_interval`` -- the option that decides how fast a polling transport sees a new message --
makes SQLAlchemy refuse to build the engine. This channel keeps kombu's own options out of it;
everything else (``pool_size``, ``connect_args``, ...) still goes to SQLAlchemy. ``taskq.broker``
names it for the ``sqla``/``sqlalchemy`` schemes (importing this module imports SQLAlchemy).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import sqlalchemy

# Options kombu's transport (or its virtual base) reads itself: never engine arguments.
KOMBU_OPTIONS = frozenset({
    "queue_tablename", "message_tablename", "polling_interval", "body_encoding", "deadletter_queue",
    "callback", "errback", "max_retries", "interval_start", "interval_step", "interval_max",
    "retry_errors",
})  # fmt: skip


class Channel(sqlalchemy.Channel):
    def _engine_from_config(self) -> Any:
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items() if k not in KOMBU_OPTIONS}
        return sqlalchemy.create_engine(conninfo.hostname, **options)


class Transport(sqlalchemy.Transport):
    Channel = Channel
