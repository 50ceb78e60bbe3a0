"""Making a named voice, for ``POST /v1/voices`` and ``parley voices create``: the clip checked
and decoded, the row stored, its encoding sent to the workers. It needs only the shared
resources (``shared.resources.Resources``), so the CLI calls it without the API's state."""

from __future__ import annotations

import logging

from api.services.turn_intake import check_provided
from shared.audio import containers as audio
from shared.db.models import Voice
from shared.jobs.queue import enqueue_voice
from shared.resources import Resources
from shared.services.voices import check_voice_name, create_voice

log = logging.getLogger(__name__)


def store_voice(
    state: Resources, *, owner: str, name: str, text: str, speaker: int, data: bytes
) -> Voice:
    """Check and decode the clip, store the voice (``encoding``), and send it to the workers
    to encode; the owner ``shared.services.voices.SERVER_OWNER`` makes a server voice."""
    name = check_voice_name(name.strip())
    clip = check_provided(state, speaker=speaker, text=text, data=data)  # as a provided turn's
    with state.sessions() as session:
        voice = create_voice(
            session,
            state.settings,
            owner=owner,
            name=name,
            text=clip.text,
            speaker=speaker,
            audio_flac=clip.audio_flac,
            duration_ms=round(clip.n_samples * 1000 / audio.SAMPLE_RATE),
        )
        session.commit()
    try:  # after the commit; a broker that is away leaves it to the workers' re-send
        enqueue_voice(state.celery, state.settings, voice.id)
    except Exception as exc:  # kombu and redis raise many types for a broker that is away
        log.warning("voice %s: enqueue failed (%s); a worker sends it again later", voice.id, exc)
    return voice
