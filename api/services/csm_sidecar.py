"""The CSM sidecar request (``POST /v1/csm/generate``) as a Parley dialogue: its context
segments become provided turns of a one-off conversation, its text the generated turn after
them; the answer is that turn's Mimi codes or its samples."""

from __future__ import annotations

import base64
import binascii

import numpy as np
from sqlalchemy import select

from api.resources import ApiState
from api.schemas.core import TurnCreate, TurnParams
from api.schemas.csm import AudioPcmOut, CsmGenerate, MimiCodesOut
from api.services.speech_turn import SpeechTurn
from api.services.stream_audio import no_audio_error
from api.services.turn_intake import ProvidedAudio, check_generated, check_provided
from shared.audio import containers as audio
from shared.db.models import JobStatus, Turn, TurnSource
from shared.errors import Conflict, InvalidInput, NotFound, ParleyError
from shared.mimi_codes import codes_from_bytes
from shared.services.turns import get_media

METADATA = {"source": "/v1/csm/generate"}
DATA_URL = ";base64,"


def check_request(state: ApiState, body: CsmGenerate) -> tuple[list[ProvidedAudio], TurnCreate]:
    """The context decoded and the turn to speak checked, before anything is stored;
    InvalidInput naming the segment (``context[2]: ...``) or the field at fault."""
    limit = state.settings.max_context_turns
    if len(body.context) > limit:
        raise InvalidInput(
            f"context has {len(body.context)} segments; the limit is {limit} (max_context_turns)",
            code="context_too_long",
        )
    queue = state.settings.max_queued_turns_per_key
    if len(body.context) + 1 > queue:  # each segment is a job, like the turn: never admitted
        raise InvalidInput(
            f"context has {len(body.context)} segments: with the turn that is "
            f"{len(body.context) + 1} jobs, more than one key may have queued at once "
            f"({queue}, max_queued_turns_per_key)",
            code="context_too_long",
        )
    context = []
    for i, segment in enumerate(body.context):
        try:
            context.append(
                check_provided(
                    state, speaker=segment.speaker, text=segment.text, data=_b64(segment.audio)
                )
            )
        except ParleyError as exc:
            raise type(exc)(f"context[{i}]: {exc.message}", code=exc.code) from exc
    params = TurnParams(
        temperature=body.temperature,
        top_k=body.top_k,
        max_audio_length_ms=body.max_audio_length_ms,
        seed=body.seed,
    )
    turn = check_generated(state, TurnCreate(speaker=body.speaker, text=body.text, params=params))
    return context, turn


def _b64(text: str) -> bytes:
    if text.startswith("data:") and DATA_URL in text:
        text = text.split(DATA_URL, 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"audio is not valid base64 ({exc})", code="invalid_audio") from exc


def answer(state: ApiState, turn: SpeechTurn, output: str) -> MimiCodesOut | AudioPcmOut:
    """The finished turn's codes or samples; Conflict when it or a context segment failed."""
    with state.reads() as session:
        turns = session.scalars(
            select(Turn).where(Turn.conversation_id == turn.conversation_id).order_by(Turn.index)
        ).all()
        if not turns:
            raise NotFound(f"turn {turn.turn_id} was deleted (its conversation was deleted)")
        for i, row in enumerate(turns):
            if row.source == TurnSource.PROVIDED and row.status != JobStatus.SUCCEEDED:
                error = row.job.error_message if row.job else None
                raise Conflict(
                    f"context[{i}] could not be encoded ({row.status}): {error or 'no reason'}",
                    code="context_failed",
                )
        spoken = turns[-1]
        if spoken.status != JobStatus.SUCCEEDED:
            job = spoken.job
            raise no_audio_error(
                spoken.id, spoken.status, job.error_message if job else None, stalled=""
            )
        media = get_media(session, turn_id=spoken.id)
        if media is None or media.codes is None or media.n_q is None or media.audio_flac is None:
            raise Conflict(f"turn {spoken.id} has no stored audio", code="no_audio")
        if output == "codes":
            codes = codes_from_bytes(media.codes, media.n_q)
            return MimiCodesOut(n_q=media.n_q, codes=codes.T.tolist())
        samples = audio.decode_flac_pcm16(media.audio_flac).astype("<f4") / audio.PCM16_FULL_SCALE
        return AudioPcmOut(pcm=base64.b64encode(np.asarray(samples, "<f4").tobytes()).decode())
