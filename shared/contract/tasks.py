"""The Celery tasks the API and the workers exchange: each task's name and its arguments.

The API never imports the worker, so tasks are sent by name; the sender builds the arguments
with :meth:`RunJobArgs.to_args` (and the like) and the task unpacks them with the same class,
so both sides agree on their order. The message carries positional JSON args only.
"""

from __future__ import annotations

from dataclasses import dataclass

RUN_JOB_TASK = "parley.run_job"
ENCODE_VOICE_TASK = "parley.encode_voice"


@dataclass(frozen=True)
class RunJobArgs:
    """``parley.run_job``: run a job. The conversation id rides along so the worker can take
    the conversation's lock at once (a message without it is still read: the job row says)."""

    job_id: str
    conversation_id: str | None = None

    def to_args(self) -> list[str | None]:
        return [self.job_id, self.conversation_id]

    @classmethod
    def from_args(cls, job_id: str, conversation_id: str | None = None) -> RunJobArgs:
        return cls(job_id=str(job_id), conversation_id=conversation_id)


@dataclass(frozen=True)
class EncodeVoiceArgs:
    """``parley.encode_voice``: encode a voice's reference clip to codes, once."""

    voice_id: str

    def to_args(self) -> list[str]:
        return [self.voice_id]

    @classmethod
    def from_args(cls, voice_id: str) -> EncodeVoiceArgs:
        return cls(voice_id=str(voice_id))
