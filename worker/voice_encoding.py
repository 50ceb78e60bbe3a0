"""Voices on the worker: a voice's reference clip encoded to codes once (task
``parley.encode_voice``), and the reference a turn of a bound speaker pins at its prompt's head.

A turn whose voice is still encoding (its task waits behind turns in the queue, or was lost)
does not wait: it encodes the clip itself and stores the codes the same way, once. Encoding is
deterministic, so whoever stores first stores what the other would have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from shared.audio import containers as audio
from shared.db.models import Voice, VoiceStatus, utcnow
from shared.errors import EngineError
from shared.jobs.queue import enqueue_voice
from shared.mimi_codes import codes_from_bytes
from shared.services.voices import (
    any_stale_voices,
    claim_stale_voices,
    fail_voice,
    store_voice_codes,
)
from worker.engine.csm import ContextTurn
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Stored:
    name: str
    text: str
    status: str
    codes: np.ndarray | None
    audio_flac: bytes | None
    error: str | None


def _load(session: Session, voice_id: str) -> _Stored | None:
    voice = session.scalar(select(Voice).where(Voice.id == voice_id).options(undefer(Voice.codes)))
    if voice is None:
        return None
    encoding = voice.status == VoiceStatus.ENCODING
    codes = None
    if voice.codes is not None and voice.n_q is not None:
        codes = codes_from_bytes(voice.codes, voice.n_q)
    return _Stored(
        name=voice.name,
        text=voice.text,
        status=voice.status,
        codes=codes,
        audio_flac=voice.audio_flac if encoding else None,  # (deferred: loaded only then)
        error=voice.error_message,
    )


def _encode(rt: WorkerRuntime, voice_id: str, stored: _Stored) -> np.ndarray | None:
    """The voice's codes; None when encoding failed (the voice is then marked failed, with
    why: the engine boundary fails the voice, not the worker)."""
    assert stored.audio_flac is not None
    try:
        return rt.engine.encode(audio.decode_flac(stored.audio_flac))
    except Exception as exc:
        log.exception("voice %s: encoding failed", voice_id)
        message = exc.message if isinstance(exc, EngineError) else f"{type(exc).__name__}: {exc}"
        rt.in_sql(
            f"voice {voice_id}: fail",
            lambda s: fail_voice(s, voice_id=voice_id, message=message),
        )
        return None


def _store(rt: WorkerRuntime, voice_id: str, stored: _Stored, codes: np.ndarray) -> None:
    """Store a voice's codes (unless another got there first)."""
    first = rt.in_sql(
        f"voice {voice_id}: store codes",
        lambda s: store_voice_codes(s, voice_id=voice_id, codes=codes),
    )
    log.info(
        "voice %s (%r): %d frames %s",
        voice_id,
        stored.name,
        codes.shape[0],
        "stored" if first else "encoded again (already stored)",
    )


def encode_voice(rt: WorkerRuntime, voice_id: str) -> None:
    """The task: encode a voice still encoding, and store its codes."""
    stored = rt.in_sql(f"voice {voice_id}: load", lambda s: _load(s, voice_id), read_only=True)
    if stored is None or stored.status != VoiceStatus.ENCODING:
        log.info("voice %s is %s; nothing to encode", voice_id, stored.status if stored else "gone")
        return
    codes = _encode(rt, voice_id, stored)
    if codes is not None:
        _store(rt, voice_id, stored, codes)


def voice_reference(rt: WorkerRuntime, voice_id: str, *, speaker: int) -> ContextTurn:
    """A voice's reference as a context turn of ``speaker`` (its transcript and codes),
    encoding it first if it is still encoding.

    Raises:
        EngineError: ``voice_failed`` (its encoding failed) or ``voice_not_found`` (deleted).
    """
    stored = rt.in_sql(f"voice {voice_id}: load", lambda s: _load(s, voice_id), read_only=True)
    if stored is None:
        raise EngineError(f"voice {voice_id} was deleted", code="voice_not_found")
    if stored.status == VoiceStatus.FAILED:
        raise EngineError(
            f"voice {stored.name!r} failed to encode: {stored.error}", code="voice_failed"
        )
    codes = stored.codes
    if codes is None:
        log.info("voice %s (%r) is still encoding; encoding it here", voice_id, stored.name)
        codes = _encode(rt, voice_id, stored)
        if codes is None:
            return voice_reference(rt, voice_id, speaker=speaker)  # failed now: say why
        _store(rt, voice_id, stored, codes)
    return ContextTurn(speaker=speaker, text=stored.text, codes=codes)


def resend_stale_voices(rt: WorkerRuntime) -> list[str]:
    """Send again every voice still encoding ``voice_resend_s`` after it was last sent (its task
    was lost: a worker killed while encoding, Redis emptied, the broker away at creation).
    Run after each heartbeat; the ids sent. A duplicate task finds the voice ready and stops."""
    cutoff = utcnow() - timedelta(seconds=rt.settings.voice_resend_s)
    with rt.reads() as session:
        if not any_stale_voices(session, sent_before=cutoff):
            return []
    with rt.sessions() as session:
        stale = claim_stale_voices(session, sent_before=cutoff)
        session.commit()
    for voice_id in stale:
        log.warning("voice %s is still encoding; sending it to the workers again", voice_id)
        try:
            enqueue_voice(rt.celery, rt.settings, voice_id)
        except Exception as exc:  # the broker is away: the next pass past the cutoff retries
            log.warning("voice %s: enqueue failed (%s)", voice_id, exc)
    return stale
