"""The ``voice`` of an OpenAI speech request → what the turn speaks with. One function,
:func:`resolve_voice`: a named voice first (the caller's own, else one of the server's, so an
operator who makes a server voice called ``alloy`` gives every key's ``alloy`` that voice),
then OpenAI's built-in names as bare CSM speaker ids, then a speaker id written as digits."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from shared.db.models import VoiceStatus
from shared.errors import InvalidInput
from shared.services.voices import find_voice

# OpenAI's built-in voices in the order OpenAI lists them (marin and cedar came later), each on
# its own CSM speaker id. csm-1b has no fixed voice per id: an id keeps one voice only within a
# conversation, where the earlier turns are its context; a named voice keeps it everywhere.
OPENAI_VOICES: dict[str, int] = {
    name: speaker
    for speaker, name in enumerate(
        (
            "alloy",
            "ash",
            "ballad",
            "coral",
            "echo",
            "fable",
            "onyx",
            "nova",
            "sage",
            "shimmer",
            "verse",
            "marin",
            "cedar",
        )
    )
}


@dataclass(frozen=True)
class SpeechVoice:
    speaker: int
    voice_id: str | None  # a named voice, pinned at the head of the turn's prompt


def resolve_voice(session: Session, *, owner: str, name: str) -> SpeechVoice:
    """A named voice (exact name; its speaker), an OpenAI voice name (any case) by the table,
    or a speaker id written as digits (``"3"``); InvalidInput naming anything else."""
    named = find_voice(session, owner=owner, name=name.strip())
    if named is not None:
        if named.status == VoiceStatus.FAILED:
            raise InvalidInput(
                f"voice {named.name!r} failed to encode; create it again", code="voice_failed"
            )
        return SpeechVoice(speaker=named.speaker, voice_id=named.id)
    key = name.strip().lower()
    if key in OPENAI_VOICES:
        return SpeechVoice(speaker=OPENAI_VOICES[key], voice_id=None)
    if key.isascii() and key.isdigit() and len(key) <= 9:
        return SpeechVoice(speaker=int(key), voice_id=None)
    raise InvalidInput(
        f"unknown voice {name!r}; use a voice from GET /v1/voices, one of "
        f"{', '.join(OPENAI_VOICES)}, or a speaker id",
        code="unknown_voice",
    )
