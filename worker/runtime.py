"""What a worker process makes once at start-up and passes to every job."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery
from redis import Redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.context import ContextStore
from shared.db import make_engine, make_session_factory
from shared.keys import RedisKeys
from shared.queue import create_celery
from shared.settings import Settings

if TYPE_CHECKING:
    from worker.engine.csm import CsmEngine


def worker_name() -> str:
    return f"parley-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"


@dataclass
class WorkerRuntime:
    settings: Settings
    engine: CsmEngine
    db: Engine
    sessions: sessionmaker[Session]
    redis: Redis
    context: ContextStore
    keys: RedisKeys
    celery: Celery
    name: str

    @classmethod
    def create(
        cls, settings: Settings, engine: CsmEngine, *, name: str | None = None
    ) -> WorkerRuntime:
        db = make_engine(settings)
        redis = Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
        return cls(
            settings=settings,
            engine=engine,
            db=db,
            sessions=make_session_factory(db),
            redis=redis,
            context=ContextStore(redis, settings.redis_prefix),
            keys=RedisKeys(settings.redis_prefix),
            celery=create_celery(settings),
            name=name or worker_name(),
        )

    @property
    def model_label(self) -> str:
        """The model as jobs and /readyz name it; a test model says so."""
        if self.engine.is_test_model:
            return f"{self.engine.model_name} (test model: random weights, audio is noise)"
        return self.engine.model_name

    def close(self) -> None:
        self.redis.close()
        self.db.dispose()
