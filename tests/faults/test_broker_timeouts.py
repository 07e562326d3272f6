"""The socket settings a Redis broker connection gets when the app does not choose them.

Without a socket timeout, a Redis that vanishes without closing the connection blocks a publish
or an ack forever; the defaults bound that, and anything the user set wins.
"""

from __future__ import annotations

from taskq import Celery
from taskq.broker import REDIS_SOCKET_DEFAULTS


def options(broker: str, **settings: object) -> dict[str, object]:
    app = Celery("timeouts", broker=broker, set_as_current=False, **settings)
    try:
        return dict(app.broker.new_connection().transport_options)
    finally:
        app.close()


def test_redis_gets_socket_defaults() -> None:
    got = options("redis://127.0.0.1:1/0", broker_connection_timeout=7)
    assert {k: got[k] for k in REDIS_SOCKET_DEFAULTS} == REDIS_SOCKET_DEFAULTS
    assert got["socket_connect_timeout"] == 7  # follows broker_connection_timeout, like AMQP's
    assert got["socket_timeout"] and got["health_check_interval"]  # both bounded, never "wait forever"


def test_user_transport_options_win() -> None:
    mine = {
        "socket_timeout": 1.5,
        "socket_connect_timeout": 0.5,
        "health_check_interval": 0,
        "visibility_timeout": 60,
    }
    got = options("rediss://127.0.0.1:1/0", broker_transport_options=mine)
    assert {k: got[k] for k in mine} == mine
    assert got["socket_keepalive"] is True


def test_other_transports_are_left_alone() -> None:
    for url in ("amqp://guest:guest@127.0.0.1:1//", "memory://"):
        assert not set(options(url)) & {*REDIS_SOCKET_DEFAULTS, "socket_connect_timeout"}, url
