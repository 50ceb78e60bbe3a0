"""The contract both sides read (``shared.contract``): one definition of each thing the API and
the workers exchange, and both sides using it."""

from __future__ import annotations

import json

from api.schemas.core import TurnCreate
from api.schemas.core import TurnParams as TurnParamsBody
from api.schemas.csm import CsmGenerate
from shared.contract import (
    RUN_JOB_TASK,
    EncodeVoiceArgs,
    EntryKind,
    RunJobArgs,
    StreamEntry,
    TurnParams,
    WorkerBeat,
)
from shared.redis_io import audio_stream
from worker.engine.types import SamplingParams


def test_the_request_schemas_take_their_defaults_from_the_contract() -> None:
    defaults = TurnParams()
    body = TurnParamsBody()
    assert body.model_dump() == defaults.to_json()
    assert TurnCreate(speaker=0, text="x").params.model_dump() == defaults.to_json()
    csm = CsmGenerate(text="x", speaker=0)
    assert (csm.temperature, csm.top_k, csm.seed, csm.max_audio_length_ms) == (
        defaults.temperature,
        defaults.top_k,
        defaults.seed,
        defaults.max_audio_length_ms,
    )
    sampling = SamplingParams()
    assert (sampling.temperature, sampling.top_k, sampling.seed) == (0.9, 50, None)


def test_stored_params_read_back_with_defaults_for_missing_keys() -> None:
    assert TurnParams.from_json({}) == TurnParams(0.9, 50, None, None)
    assert TurnParams.from_json(None) == TurnParams()
    stored = {"temperature": 0, "top_k": 7, "max_audio_length_ms": 800, "seed": 3}
    params = TurnParams.from_json(stored)
    assert params == TurnParams(0.0, 7, 800, 3)
    assert TurnParams.from_json(params.to_json()) == params
    sampling = SamplingParams.from_turn(params, max_frames=10)
    assert sampling == SamplingParams(temperature=0.0, top_k=7, max_frames=10, seed=3)
    assert sampling.greedy


def test_task_args_are_built_and_read_by_the_same_class() -> None:
    args = RunJobArgs(job_id="j", conversation_id="c")
    assert args.to_args() == ["j", "c"]
    assert RunJobArgs.from_args(*args.to_args()) == args
    assert RunJobArgs.from_args("j") == RunJobArgs("j", None)  # an older message
    assert EncodeVoiceArgs.from_args(*EncodeVoiceArgs("v").to_args()) == EncodeVoiceArgs("v")
    assert RUN_JOB_TASK == "parley.run_job"


def test_a_heartbeat_reads_back_as_it_was_written() -> None:
    beat = WorkerBeat(
        name="parley-1@h",
        model="m",
        test_model=True,
        device="cpu",
        pid=7,
        max_batch=8,
        compile="off",
        jobs=["a"],
        consuming=True,
        batch_rows=1,
        engine_busy_s={"model": 0.5},
    )
    assert WorkerBeat.from_json(beat.to_json()) == beat
    assert json.loads(beat.to_json())["engine_busy_s"] == {"model": 0.5}
    # A partial record (an older worker, a test) keeps exactly its keys, unknown ones too.
    raw = {"name": "w", "jobs": [], "later_field": 1}
    partial = WorkerBeat.from_dict(raw)
    assert partial.to_dict() == raw
    assert partial.consuming is None and partial.held == set()
    assert WorkerBeat().label == "None" and WorkerBeat(jobs=None).held == set()


def test_the_audio_stream_uses_the_contracts_fields() -> None:
    assert audio_stream.PCM_FIELD is StreamEntry.PCM
    assert audio_stream.END_FIELD is StreamEntry.END
    assert (StreamEntry.AT, StreamEntry.BYTES) == (b"at", b"bytes")


def test_an_entry_is_a_chunk_or_the_end() -> None:
    assert EntryKind.of({StreamEntry.PCM: b"\0\0", StreamEntry.AT: b"0"}) is EntryKind.CHUNK
    assert EntryKind.of({StreamEntry.END: b"succeeded"}) is EntryKind.END
