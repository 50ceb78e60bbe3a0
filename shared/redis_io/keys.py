"""Names of Parley's Redis keys, all under the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass

JOB_KEY_TTL_S = 24 * 3600


@dataclass(frozen=True)
class RedisKeys:
    prefix: str

    def job_frames(self, job_id: str) -> str:
        """Frames generated so far by a running job (for polling)."""
        return f"{self.prefix}:job:{job_id}:frames"

    def job_cancel(self, job_id: str) -> str:
        """Set when a running job is cancelled; the engine loop checks it every frame."""
        return f"{self.prefix}:job:{job_id}:cancel"

    def job_audio(self, job_id: str) -> str:
        """A generated job's audio as it is made: a Redis Stream of PCM chunks and an end entry
        (see ``shared.redis_io.audio_stream``)."""
        return f"{self.prefix}:job:{job_id}:audio"

    def job_text(self, job_id: str) -> str:
        """A live turn's text as it comes: a Redis Stream of segments and an end entry (see
        ``shared.redis_io.live_text``)."""
        return f"{self.prefix}:job:{job_id}:text"

    def rate_limit(self, owner: str) -> str:
        """An owner's request count in the current rate-limit window (expires with it)."""
        return f"{self.prefix}:ratelimit:{owner}"

    def worker(self, name: str) -> str:
        """A live worker's heartbeat (expires when the worker stops beating)."""
        return f"{self.prefix}:worker:{name}"

    def workers_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    def metrics(self, histogram: str) -> str:
        """A histogram's totals over all workers (see ``shared.redis_io.metric_totals``)."""
        return f"{self.prefix}:metrics:{histogram}"

    def epoch(self) -> str:
        """The run id of the Redis server that set it: when it is missing, Redis lost
        everything (a restart without persistence), broker messages included; when it names
        another server, a failover or restart put one in place that may lack the newest
        writes (see ``shared.jobs.recovery``)."""
        return f"{self.prefix}:epoch"
