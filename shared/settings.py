"""The one typed settings class. Nothing else in Parley reads the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.compile_modes import COMPILE_AUTO, COMPILE_MODES, COMPILE_OFF
from shared.devices import is_device
from shared.redis_io.url import RedisUrl, parse_redis_url

DEFAULT_MODEL = "sesame/csm-1b"
# Room for a multipart upload's boundaries and small fields around its audio file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# The default request body limit is max_upload_bytes plus this.
REQUEST_BYTES_MARGIN = 1024 * 1024


class Settings(BaseSettings):
    """Every knob of Parley, read from ``PARLEY_*`` environment variables."""

    # Errors name the setting and the problem, never echo a value (URLs and keys hold secrets).
    model_config = SettingsConfigDict(
        env_prefix="PARLEY_", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = "sqlite:///./parley.db"
    # redis://, rediss://, unix://, or Sentinel: redis+sentinel://H:P[,H:P...]/SERVICE[/DB].
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Namespaces every Redis key and the Celery queue, so several stacks share one Redis.
    redis_prefix: str = "parley"
    model: str = DEFAULT_MODEL
    # auto, cpu, cuda or cuda:K. Under `parley up`, auto and cuda put worker k on cuda:{k % GPUs}.
    device: str = "auto"
    # Comma separated bearer keys; empty means the server runs open.
    api_keys: str = ""
    # Where the tiny random checkpoint is built when the default model cannot be had.
    tiny_model_dir: Path = Path(".parley/tiny-csm")

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    # "text" for a person at a terminal; "json" (one object a line, with request and job ids as
    # fields) for a log collector.
    log_format: Literal["text", "json"] = "text"
    # Celery task and worker events, for Flower's task and worker views; off, less broker traffic.
    celery_events: bool = False

    # Limits.
    max_text_chars: int = Field(default=4096, ge=1)
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    max_upload_duration_ms: int = Field(default=120_000, ge=1)
    max_audio_length_ms: int = Field(default=30_000, ge=80)
    # A live turn (``/live``) whose client sends no text for this long ends there.
    live_text_idle_s: float = Field(default=60.0, gt=0)
    default_context_turns: int = Field(default=10, ge=0)
    max_context_turns: int = Field(default=64, ge=0)
    max_speaker: int = Field(default=31, ge=0)
    # Any request body; None: max_upload_bytes + 1 MiB (see ``request_bytes_limit``).
    max_request_bytes: int | None = Field(default=None, ge=1)

    # Quotas and backpressure.
    max_conversations_per_key: int = Field(default=1000, ge=1)
    # Jobs queued or running: of one key (all its conversations), and of the whole server.
    max_queued_turns_per_key: int = Field(default=32, ge=1)
    max_queued_turns: int = Field(default=1000, ge=1)
    # Named voices one key may hold.
    max_voices_per_key: int = Field(default=100, ge=1)
    # Retry-After of a 429 for a full queue.
    retry_after_s: int = Field(default=5, ge=1)
    # Requests per key per minute on /v1; 0 turns the limiter off.
    rate_limit_per_minute: int = Field(default=600, ge=0)
    # How long a request that answers with the turn itself (/v1/audio/speech, /v1/csm/generate)
    # waits for it (queue and generation) before a 504.
    sync_wait_s: float = Field(default=300.0, gt=0)

    # Worker.
    worker_heartbeat_s: float = Field(default=5.0, gt=0)
    # torch's intra-op threads per worker (0: torch's own choice, one per core). A worker runs
    # torch from many threads (the frame loop, every task thread); with more than one intra-op
    # thread each of them gets an OpenMP team of its own, and libgomp, seeing more threads than
    # cores, stops spinning between parallel regions: the frame loop ran 2-3x slower on CPU.
    worker_torch_threads: int = Field(default=1, ge=0)
    # A worker whose broker consumer has been down this long (the broker unreachable, or the
    # consumer dead) exits with code 3, so that its supervisor replaces it; shorter losses are
    # ridden out.
    worker_broker_timeout_s: float = Field(default=60.0, gt=0)
    # How long a worker waits out a database outage (keeping the turn in hand) before it gives up.
    db_retry_s: float = Field(default=300.0, ge=0)
    # A voice still encoding this long after it was sent to the workers is sent again (its task
    # was lost: a worker killed mid-encode, Redis emptied, the broker away when it was made).
    voice_resend_s: float = Field(default=60.0, gt=0)
    # Turns of different conversations one worker runs together, frame by frame.
    max_batch: int = Field(default=8, ge=1, le=256)

    # How the frame loop's fixed-shape steps run: auto (CUDA graphs on a GPU, eager on CPU),
    # off (also 0/false), graphs, inductor (torch.compile), inductor+graphs. Workers prepare
    # every batch bucket at start, so no turn waits for a compilation.
    compile: str = "auto"

    # The silent-tail guard: a run of silent frames ends a turn, its tail cut to `keep`.
    silence_guard: bool = True
    silence_threshold_dbfs: float = Field(default=-60.0, le=0)
    silence_tail_ms: int = Field(default=2000, ge=80)
    silence_keep_ms: int = Field(default=320, ge=0)

    @field_validator("api_keys")
    @classmethod
    def _strip_keys(cls, value: str) -> str:
        return ",".join(k.strip() for k in value.split(",") if k.strip())

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, value: str) -> str:
        parse_redis_url(value)  # a ValueError naming what is wrong (the password redacted)
        return value

    @field_validator("compile")
    @classmethod
    def _known_compile_mode(cls, value: str) -> str:
        value = value.strip().lower()
        allowed = (*COMPILE_AUTO, *COMPILE_OFF, *COMPILE_MODES[1:])
        if value not in allowed:
            raise ValueError(f"unknown compile mode {value!r}; one of {', '.join(allowed)}")
        return value

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not is_device(value):
            raise ValueError(f"unknown device {value!r} (expected auto, cpu, cuda or cuda:K)")
        return value

    @model_validator(mode="after")
    def _silence_keep_below_tail(self) -> Settings:
        if self.silence_keep_ms >= self.silence_tail_ms:
            raise ValueError(
                f"silence_keep_ms ({self.silence_keep_ms}) must be less than silence_tail_ms "
                f"({self.silence_tail_ms})"
            )
        return self

    @model_validator(mode="after")
    def _request_bytes_hold_an_upload(self) -> Settings:
        least = self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        if self.max_request_bytes is not None and self.max_request_bytes < least:
            raise ValueError(
                f"max_request_bytes ({self.max_request_bytes}) must be at least "
                f"max_upload_bytes + {MULTIPART_OVERHEAD_BYTES} ({least}), so that an upload "
                "within max_upload_bytes fits in a request"
            )
        return self

    @property
    def request_bytes_limit(self) -> int:
        """The largest request body the API reads (``max_request_bytes`` or its default)."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return self.max_upload_bytes + REQUEST_BYTES_MARGIN

    @property
    def redis(self) -> RedisUrl:
        """``redis_url`` parsed: where every Redis client and the broker connect."""
        return parse_redis_url(self.redis_url)

    @property
    def api_key_list(self) -> list[str]:
        return [k for k in self.api_keys.split(",") if k]

    @property
    def queue_name(self) -> str:
        return f"{self.redis_prefix}.turns"

    @property
    def uses_default_model(self) -> bool:
        return self.model == DEFAULT_MODEL


def cuda_visible_devices() -> str | None:
    """CUDA's own ``CUDA_VISIBLE_DEVICES`` (None when unset). Not a Parley setting: CUDA reads it
    in each worker; ``parley up`` reads it to count the GPUs its workers will see."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")
