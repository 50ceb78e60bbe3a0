"""Resources the API makes once, at app creation, and hands to routes."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.middleware.rate_limit import RateLimiter
from shared.db.engine import make_engine, make_session_factory
from shared.jobs.queue import create_celery
from shared.redis_io.context import ContextStore
from shared.redis_io.keys import RedisKeys
from shared.settings import Settings


@dataclass
class ApiState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    reads: sessionmaker[Session]  # read-only work: never waits for SQLite's write lock
    redis: Redis
    celery: Celery
    context: ContextStore
    keys: RedisKeys
    rate_limiter: RateLimiter

    @classmethod
    def create(cls, settings: Settings) -> ApiState:
        engine = make_engine(settings)
        redis = settings.redis.client(socket_timeout=5, socket_connect_timeout=2)
        keys = RedisKeys(settings.redis_prefix)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            reads=make_session_factory(engine, read_only=True),
            redis=redis,
            celery=create_celery(settings),
            context=ContextStore(redis, settings.redis_prefix),
            keys=keys,
            rate_limiter=RateLimiter(redis, keys, per_minute=settings.rate_limit_per_minute),
        )

    def close(self) -> None:
        self.redis.close()
        self.engine.dispose()
