"""Loading the model a worker serves, with DESIGN.md's one fallback rule.

A model named explicitly that cannot load is an error. Only the default (sesame/csm-1b) may
fall back, to the tiny random checkpoint, and then every job and /readyz say so.
"""

from __future__ import annotations

import logging

from shared.errors import ModelLoadError
from shared.settings import Settings
from worker.engine.csm import CsmEngine
from worker.engine.tiny import build_tiny_checkpoint

log = logging.getLogger(__name__)


def load_engine(settings: Settings) -> CsmEngine:
    try:
        return CsmEngine.load(settings.model, device=settings.device)
    except ModelLoadError as exc:
        if not settings.uses_default_model:
            raise
        reason = exc.message
    path = settings.tiny_model_dir
    log.warning(
        "the default model %s cannot be had (%s); serving the tiny random TEST checkpoint at %s "
        "instead: its audio is noise, not speech",
        settings.model,
        reason,
        path,
    )
    if not (path / "config.json").exists():
        build_tiny_checkpoint(path)
    return CsmEngine.load(str(path), device=settings.device)
