"""The model names the OpenAI-compatible endpoints answer to. Every name speaks with the one
model the workers serve (``PARLEY_MODEL``); the OpenAI names are aliases for clients that only
know those."""

from __future__ import annotations

from shared.errors import InvalidInput
from shared.settings import Settings

CSM_MODEL_ID = "csm-1b"
OPENAI_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# csm-1b's release (2025-03-13), as the ``created`` of every listed model.
CREATED = 1741824000


def model_ids(settings: Settings) -> list[str]:
    """``csm-1b``, the configured model's name when it differs, then the OpenAI aliases."""
    ids = [CSM_MODEL_ID]
    if settings.model != CSM_MODEL_ID:
        ids.append(settings.model)
    return [*ids, *OPENAI_ALIASES]


def owned_by(model_id: str) -> str:
    return "parley" if model_id in OPENAI_ALIASES else "sesame"


def check_model(name: str, settings: Settings) -> str:
    ids = model_ids(settings)
    if name not in ids:
        raise InvalidInput(
            f"unknown model {name!r}; use one of {', '.join(ids)}", code="unknown_model"
        )
    return name
