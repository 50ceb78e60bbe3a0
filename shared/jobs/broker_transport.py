"""kombu's Redis transports, with a channel that survives closing after the broker vanished.

When Redis goes away while a worker holds unacknowledged messages (every running turn: acks
are late), Celery closes the lost connection and kombu's channel tries to put those messages
back. By then the transport may already be detached from its connection, and kombu raises
``AttributeError`` (``'NoneType' object has no attribute 'hostname'``), which Celery takes for
an unrecoverable error: the worker process stops on a broker loss of a second. The late ack of
a turn that ran across the loss fails the same way. Here such a channel raises a connection
error instead, which Celery handles as it should: the consumer reconnects, the ack is logged
as failed, and the worker goes on.

Nothing is lost by not restoring those messages then: they stay in the broker's unacked set
(kombu restores them after the visibility timeout, if Redis kept them), and SQL is the truth
(recovery re-sends what the broker lost; a duplicate message of a job that already ran is
skipped). Celery picks these classes by ``broker_transport`` (see ``shared.jobs.queue``).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis
from redis.exceptions import ConnectionError as RedisConnectionError


class _DetachedIsLost:
    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:  # type: ignore[attr-defined]
            # The transport was detached from its connection: kombu would fail on None with an
            # AttributeError. Say what it is, a lost connection, which kombu and Celery handle.
            raise RedisConnectionError("this broker channel's connection was closed")
        params: dict[str, Any] = super()._connparams(asynchronous)  # type: ignore[misc]
        return params


class Channel(_DetachedIsLost, redis.Channel):
    pass


class SentinelChannel(_DetachedIsLost, redis.SentinelChannel):
    pass


class Transport(redis.Transport):
    Channel = Channel


class SentinelTransport(redis.SentinelTransport):
    Channel = SentinelChannel
