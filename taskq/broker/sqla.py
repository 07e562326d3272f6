"""kombu's SQLAlchemy transport (``sqla+postgresql://...``, ``sqla+sqlite:///...``), usable with options.

kombu passes every broker transport option except its table names to ``create_engine``, so
``polling_interval`` -- the option that decides how fast a polling transport sees a new message --
makes SQLAlchemy refuse to build the engine. This channel keeps kombu's own options out of it;
everything else (``pool_size``, ``connect_args``, ...) still goes to SQLAlchemy. ``taskq.broker``
names it for the ``sqla``/``sqlalchemy`` schemes (importing this module imports SQLAlchemy).

It also survives two sessions creating the same queue at once. kombu checks for the queue row,
then inserts it under a lock of its process, and treats only OperationalError as a failed
insert: another process creating the queue in between, or (on MySQL and MariaDB, whose
REPEATABLE READ snapshot hides rows committed since) another thread of the same process,
made the first send to a new queue fail with IntegrityError.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import sqlalchemy
from sqlalchemy.exc import IntegrityError

# Options kombu's transport (or its virtual base) reads itself: never engine arguments.
KOMBU_OPTIONS = frozenset({
    "queue_tablename", "message_tablename", "polling_interval", "body_encoding", "deadletter_queue",
    "callback", "errback", "max_retries", "interval_start", "interval_step", "interval_max",
    "retry_errors",
})  # fmt: skip
logger = logging.getLogger("taskq.broker")


class Channel(sqlalchemy.Channel):
    def _engine_from_config(self) -> Any:
        conninfo = self.connection.client
        options = {k: v for k, v in conninfo.transport_options.items() if k not in KOMBU_OPTIONS}
        return sqlalchemy.create_engine(conninfo.hostname, **options)

    def _get_or_create(self, queue: str) -> Any:
        try:
            return super()._get_or_create(queue)
        except IntegrityError:  # its name is unique: someone else's row, committed meanwhile
            self.session.rollback()  # and a new transaction sees it, whatever the isolation level
            found = self.session.query(self.queue_cls).filter(self.queue_cls.name == queue).first()
            if found is None:
                raise
            return found

    def close(self) -> None:
        """End the channel's session too: kombu leaves it, and the transaction its last read
        opened, to the garbage collector, and a table an open transaction has read cannot be
        altered or dropped until then (MySQL's metadata locks, PostgreSQL's table locks)."""
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except Exception as exc:  # a dead connection: nothing left to end
                logger.debug("closing the SQLAlchemy transport's session: %r", exc)
        super().close()


class Transport(sqlalchemy.Transport):
    Channel = Channel
