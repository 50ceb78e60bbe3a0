"""Resources the API makes once, at app creation, and hands to routes: the shared bundle
(``shared.resources.Resources``) plus the API's own rate limiter."""

from __future__ import annotations

from dataclasses import dataclass

from api.middleware.rate_limit import RateLimiter
from shared.resources import Resources
from shared.settings import Settings


@dataclass
class ApiState(Resources):
    rate_limiter: RateLimiter

    @classmethod
    def create(cls, settings: Settings) -> ApiState:
        base = Resources.open(settings, redis_timeout_s=5, redis_connect_timeout_s=2)
        limiter = RateLimiter(base.redis, base.keys, per_minute=settings.rate_limit_per_minute)
        return cls(**base.shared(), rate_limiter=limiter)
