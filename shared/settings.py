"""The one typed settings class. Nothing else in Parley reads the environment."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "sesame/csm-1b"


class Settings(BaseSettings):
    """Every knob of Parley, read from ``PARLEY_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore")

    database_url: str = "sqlite:///./parley.db"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Namespaces every Redis key and the Celery queue, so several stacks share one Redis.
    redis_prefix: str = "parley"
    model: str = DEFAULT_MODEL
    device: str = "auto"
    # Comma separated bearer keys; empty means the server runs open.
    api_keys: str = ""
    # Where the tiny random checkpoint is built when the default model cannot be had.
    tiny_model_dir: Path = Path(".parley/tiny-csm")

    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"

    # Limits.
    max_text_chars: int = Field(default=1000, ge=1)
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    max_upload_duration_ms: int = Field(default=120_000, ge=1)
    max_audio_length_ms: int = Field(default=30_000, ge=80)
    default_audio_length_ms: int = Field(default=10_000, ge=80)
    default_context_turns: int = Field(default=10, ge=0)
    max_context_turns: int = Field(default=64, ge=0)
    max_speaker: int = Field(default=31, ge=0)

    # Worker.
    worker_heartbeat_s: float = Field(default=5.0, gt=0)
    worker_torch_threads: int = Field(default=0, ge=0)  # 0: torch's own choice
    # Turns of different conversations one worker runs together, frame by frame.
    max_batch: int = Field(default=8, ge=1, le=256)

    # Frames decoded and streamed together after the first (which goes out alone, at once):
    # 1 streams every 80 ms frame as it comes; more decodes faster for a little more latency.
    stream_chunk_frames: int = Field(default=4, ge=1, le=25)

    # The silent-tail guard: a run of silent frames ends a turn, its tail cut to `keep`.
    silence_guard: bool = True
    silence_threshold_dbfs: float = Field(default=-60.0, le=0)
    silence_tail_ms: int = Field(default=2000, ge=80)
    silence_keep_ms: int = Field(default=320, ge=0)

    @field_validator("api_keys")
    @classmethod
    def _strip_keys(cls, value: str) -> str:
        return ",".join(k.strip() for k in value.split(",") if k.strip())

    @model_validator(mode="after")
    def _silence_keep_below_tail(self) -> Settings:
        if self.silence_keep_ms >= self.silence_tail_ms:
            raise ValueError(
                f"silence_keep_ms ({self.silence_keep_ms}) must be less than silence_tail_ms "
                f"({self.silence_tail_ms})"
            )
        return self

    @property
    def api_key_list(self) -> list[str]:
        return [k for k in self.api_keys.split(",") if k]

    @property
    def queue_name(self) -> str:
        return f"{self.redis_prefix}.turns"

    @property
    def uses_default_model(self) -> bool:
        return self.model == DEFAULT_MODEL
