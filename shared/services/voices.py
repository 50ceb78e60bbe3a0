"""Voice services: create, get, list, delete; a voice's codes stored once; speakers of a
conversation bound to voices. They flush; callers commit.

A voice's reference clip is encoded to Mimi codes on a worker (task ``parley.encode_voice``),
never twice: storing its codes is one conditional update from ``encoding`` to ``ready``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime

import numpy as np
from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from shared.db.models import (
    JobStatus,
    SpeakerVoice,
    Turn,
    TurnVoice,
    Voice,
    VoiceStatus,
    utcnow,
)
from shared.errors import Conflict, InvalidInput, NotFound
from shared.jobs.dispatch import lock_conversation
from shared.mimi_codes import codes_to_bytes
from shared.services.quotas import lock_owner
from shared.settings import Settings

VOICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# The owner of the server's voices, made by the operator (``parley voices create``) and usable
# by every key; never a key's owner (those are sha256 hex digests, or "open").
SERVER_OWNER = "server"


def check_voice_name(name: str) -> str:
    """A voice name: 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or
    digit (it appears in URLs as it is)."""
    if not VOICE_NAME.fullmatch(name):
        raise InvalidInput(
            f"voice name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            code="invalid_voice_name",
        )
    return name


def create_voice(
    session: Session,
    settings: Settings,
    *,
    owner: str,
    name: str,
    text: str,
    speaker: int,
    audio_flac: bytes,
    duration_ms: int,
) -> Voice:
    """A new voice, ``encoding`` until a worker stores its codes. 409 for a name the owner
    already has, or one voice past ``max_voices_per_key``."""
    lock_owner(session, owner)  # the count and the name check hold until commit
    taken = session.scalar(select(Voice.id).where(Voice.owner == owner, Voice.name == name))
    if taken is not None:
        raise Conflict(f"voice {name!r} already exists", code="voice_exists")
    count = session.scalar(select(func.count()).select_from(Voice).where(Voice.owner == owner))
    limit = settings.max_voices_per_key
    if (count or 0) >= limit:
        raise Conflict(
            f"this key has {count} voices; the limit is {limit} (max_voices_per_key): "
            "delete one to make another",
            code="voice_limit",
        )
    voice = Voice(
        owner=owner,
        name=name,
        text=text,
        speaker=speaker,
        audio_flac=audio_flac,
        duration_ms=duration_ms,
        status=VoiceStatus.ENCODING,
    )
    session.add(voice)
    session.flush()
    return voice


def get_voice(session: Session, *, owner: str, name: str) -> Voice:
    """The voice a caller means by a name (see :func:`find_voice`); NotFound for a missing one
    and for another owner's."""
    voice = find_voice(session, owner=owner, name=name)
    if voice is None:
        raise NotFound(f"voice {name!r} not found")
    return voice


def _visible(owner: str) -> Select[Voice]:
    """The voices ``owner`` may use: its own and the server's."""
    return select(Voice).where(Voice.owner.in_({owner, SERVER_OWNER}))


def _by_name(voices: Iterable[Voice], *, owner: str) -> dict[str, Voice]:
    """Name → voice, the owner's own before the server's of the same name (in their order)."""
    chosen: dict[str, Voice] = {}
    for voice in voices:
        if voice.name not in chosen or voice.owner == owner:
            chosen[voice.name] = voice
    return chosen


def find_voice(session: Session, *, owner: str, name: str) -> Voice | None:
    """The owner's voice of that name, else the server's, else None."""
    found = session.scalars(_visible(owner).where(Voice.name == name))
    return _by_name(found, owner=owner).get(name)


def list_voices(session: Session, *, owner: str) -> list[Voice]:
    """The owner's voices and the server's, by name; an own voice hides a server one of the
    same name."""
    rows = session.scalars(_visible(owner).order_by(Voice.name))
    return list(_by_name(rows, owner=owner).values())


def check_deletable(voice: Voice, *, owner: str) -> None:
    """A key may delete its own voices only; the server's are the operator's."""
    if voice.owner != owner:
        raise Conflict(
            f"voice {voice.name!r} is one of the server's: the operator removes it "
            f"(parley voices delete {voice.name})",
            code="server_voice",
        )


def delete_voice(session: Session, *, voice: Voice) -> None:
    """Delete a voice. 409 while a conversation binds it or a turn waiting to be spoken (queued
    or running) uses it: unbind it first; nothing is unbound behind a conversation's back."""
    # Lock the row (PostgreSQL; SQLite writers are serialised) so that no binding or turn can
    # take it between the checks and the delete (they lock it for share, or by foreign key).
    session.execute(select(Voice.id).where(Voice.id == voice.id).with_for_update())
    bound = session.execute(
        select(SpeakerVoice.conversation_id, SpeakerVoice.speaker)
        .where(SpeakerVoice.voice_id == voice.id)
        .order_by(SpeakerVoice.conversation_id, SpeakerVoice.speaker)
    ).all()
    if bound:
        cid, speaker = bound[0]
        more = f" (and {len(bound) - 1} more)" if len(bound) > 1 else ""
        raise Conflict(
            f"voice {voice.name!r} is bound to speaker {speaker} of conversation {cid}{more}; "
            'unbind it first (PATCH the conversation with {"speakers": {"'
            f'{speaker}": null}})',
            code="voice_in_use",
        )
    waiting = session.scalar(
        select(Turn.id)
        .join(TurnVoice, TurnVoice.turn_id == Turn.id)
        .where(
            TurnVoice.voice_id == voice.id,
            Turn.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
        )
        .limit(1)
    )
    if waiting is not None:
        raise Conflict(
            f"voice {voice.name!r} is used by turn {waiting}, which is waiting to be spoken; "
            "delete the voice once it is done (or cancelled)",
            code="voice_in_use",
        )
    session.delete(voice)
    session.flush()


def bind_speakers(
    session: Session, *, owner: str, conversation_id: str, speakers: Mapping[int, str | None]
) -> None:
    """Bind each speaker to the owner's voice of that name (None: unbind it). Takes the
    conversation's lock first, so a change applies exactly to the turns posted after it.
    422 naming an unknown voice (or one whose encoding failed); nothing changes then."""
    lock_conversation(session, conversation_id)
    names = sorted({name for name in speakers.values() if name is not None})
    # For share: a voice being deleted is waited for, then found gone.
    rows = session.scalars(_visible(owner).where(Voice.name.in_(names)).with_for_update(read=True))
    found = _by_name(rows, owner=owner)
    unknown = [name for name in names if name not in found]
    if unknown:
        raise InvalidInput(
            f"unknown voice {', '.join(repr(n) for n in unknown)}: create it with POST /v1/voices",
            code="unknown_voice",
        )
    failed = [name for name in names if found[name].status == VoiceStatus.FAILED]
    if failed:
        raise InvalidInput(
            f"voice {', '.join(repr(n) for n in failed)} failed to encode; create it again",
            code="voice_failed",
        )
    for speaker, name in speakers.items():
        binding = session.get(SpeakerVoice, (conversation_id, speaker))
        if name is None:
            if binding is not None:
                session.delete(binding)
        elif binding is None:
            session.add(
                SpeakerVoice(
                    conversation_id=conversation_id, speaker=speaker, voice_id=found[name].id
                )
            )
        else:
            binding.voice_id = found[name].id
    session.flush()


def speaker_voices(session: Session, *, conversation_id: str) -> dict[int, str]:
    """A conversation's bindings: speaker → voice name."""
    rows = session.execute(
        select(SpeakerVoice.speaker, Voice.name)
        .join(Voice, Voice.id == SpeakerVoice.voice_id)
        .where(SpeakerVoice.conversation_id == conversation_id)
        .order_by(SpeakerVoice.speaker)
    ).all()
    return {speaker: name for speaker, name in rows}


def pin_bound_voice(session: Session, *, turn: Turn, voice_id: str | None = None) -> None:
    """Fix a new generated turn's voice: ``voice_id`` when given (a voice the request named),
    else its speaker's binding now (call under the conversation's lock, in the transaction that
    adds the turn)."""
    if voice_id is not None:
        # For share, as a binding takes it: a voice deleted since the request named it is gone.
        named = session.scalar(
            select(Voice.id).where(Voice.id == voice_id).with_for_update(read=True)
        )
        if named is None:
            raise InvalidInput("the voice this turn names was just deleted", code="unknown_voice")
    else:
        voice_id = session.scalar(
            select(SpeakerVoice.voice_id).where(
                SpeakerVoice.conversation_id == turn.conversation_id,
                SpeakerVoice.speaker == turn.speaker,
            )
        )
    if voice_id is not None:
        session.add(TurnVoice(turn_id=turn.id, voice_id=voice_id))
        session.flush()


def store_voice_codes(session: Session, *, voice_id: str, codes: np.ndarray) -> bool:
    """Store a voice's codes, once: True when this call stored them (the voice was still
    encoding), False when another got there first or the voice is gone."""
    result = session.execute(
        update(Voice)
        .where(Voice.id == voice_id, Voice.status == VoiceStatus.ENCODING)
        .values(
            codes=codes_to_bytes(codes),
            n_q=int(codes.shape[1]),
            frames=int(codes.shape[0]),
            status=VoiceStatus.READY,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def fail_voice(session: Session, *, voice_id: str, message: str) -> None:
    """Mark a voice still encoding as failed, with the reason."""
    session.execute(
        update(Voice)
        .where(Voice.id == voice_id, Voice.status == VoiceStatus.ENCODING)
        .values(status=VoiceStatus.FAILED, error_message=message[:2000])
        .execution_options(synchronize_session=False)
    )


def any_stale_voices(session: Session, *, sent_before: datetime) -> bool:
    """Whether a voice still encoding was last sent before ``sent_before`` (a read, so the
    usual pass finding none never takes SQLite's write lock)."""
    stale = select(Voice.id).where(
        Voice.status == VoiceStatus.ENCODING, Voice.sent_at < sent_before
    )
    return session.scalar(stale.limit(1)) is not None


def claim_stale_voices(session: Session, *, sent_before: datetime) -> list[str]:
    """Voices still encoding that were last sent before ``sent_before``: mark them sent now and
    return their ids, to be sent again. One conditional update, so of several workers' passes
    only one re-sends a voice."""
    return list(
        session.scalars(
            update(Voice)
            .where(Voice.status == VoiceStatus.ENCODING, Voice.sent_at < sent_before)
            .values(sent_at=utcnow())
            .returning(Voice.id)
            .execution_options(synchronize_session=False)
        )
    )
