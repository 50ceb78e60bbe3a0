"""The contract between the API and the workers: the one place both sides read what they
exchange through SQL and Redis, so neither writes a name, a key or a default of its own.

- ``tasks``: the Celery task names and each task's typed arguments;
- ``params``: a turn's sampling params and their defaults (defined once);
- ``heartbeat``: a worker's heartbeat record in Redis;
- ``stream``: the entries of a job's audio stream in Redis;
- ``states``: job states and the transitions between them.

Plain data only: nothing here imports the API, the worker, SQL, Redis or torch.
"""

from __future__ import annotations

from shared.contract.heartbeat import WorkerBeat
from shared.contract.params import TurnParams
from shared.contract.states import TRANSITIONS, IllegalTransition, JobStatus, check_transition
from shared.contract.stream import EntryKind, StreamEntry
from shared.contract.tasks import ENCODE_VOICE_TASK, RUN_JOB_TASK, EncodeVoiceArgs, RunJobArgs

__all__ = [
    "ENCODE_VOICE_TASK",
    "RUN_JOB_TASK",
    "TRANSITIONS",
    "EncodeVoiceArgs",
    "EntryKind",
    "IllegalTransition",
    "JobStatus",
    "RunJobArgs",
    "StreamEntry",
    "TurnParams",
    "WorkerBeat",
    "check_transition",
]
