"""What every Parley process opens once and shares: the settings, the SQL engine and its
session factories, a Redis client with the key names, the conversation context cache and the
Celery app (to send work). The API (``api.resources.ApiState``), the workers
(``worker.runtime.WorkerRuntime``) and the CLI all hold one; each side adds only its own parts.
:meth:`Resources.close` releases what :meth:`Resources.open` opened.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from celery import Celery
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import make_engine, make_session_factory
from shared.jobs.queue import create_celery
from shared.redis_io.context import ContextStore
from shared.redis_io.keys import RedisKeys
from shared.settings import Settings


@dataclass
class Resources:
    settings: Settings
    db: Engine
    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]  # read-only work: never takes SQLite's write lock
    redis: Redis
    keys: RedisKeys
    context: ContextStore
    celery: Celery

    @classmethod
    def open(
        cls, settings: Settings, *, redis_timeout_s: float = 5, redis_connect_timeout_s: float = 2
    ) -> Resources:
        """Open the shared resources (a process calls this once)."""
        db = make_engine(settings)
        redis = settings.redis.client(
            socket_timeout=redis_timeout_s, socket_connect_timeout=redis_connect_timeout_s
        )
        return Resources(
            settings=settings,
            db=db,
            sessions=make_session_factory(db),
            reads=make_session_factory(db, read_only=True),
            redis=redis,
            keys=RedisKeys(settings.redis_prefix),
            context=ContextStore(redis, settings.redis_prefix),
            celery=create_celery(settings),
        )

    def shared(self) -> dict[str, Any]:
        """The shared parts by name, to build a subclass that adds its own: ``Sub(**shared,
        extra=...)``."""
        return {f.name: getattr(self, f.name) for f in fields(Resources)}

    def close(self) -> None:
        self.redis.close()
        self.db.dispose()
