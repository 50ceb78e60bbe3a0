"""Loading the model a worker serves, with its one fallback rule.

A model named explicitly that cannot load is an error. Only the default (sesame/csm-1b) may
fall back, to the tiny random checkpoint, and then every job and /readyz say so.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import constants as hub_constants

from shared.errors import ModelLoadError
from shared.settings import Settings
from worker.engine.csm import CsmEngine
from worker.engine.tiny import build_tiny_checkpoint

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 3.0


def hub_reachable() -> bool:
    """Whether a TCP connection to the Hugging Face hub opens within a few seconds."""
    url = urlsplit(hub_constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def load_engine(settings: Settings) -> CsmEngine:
    if not settings.uses_default_model:
        return _load(settings, settings.model)
    # The default may fall back. Without a reachable hub, take it from the local cache only:
    # transformers would otherwise retry an unreachable hub for minutes before failing.
    offline = not Path(settings.model).exists() and not hub_reachable()
    try:
        return _load(settings, settings.model, offline=offline)
    except ModelLoadError as exc:
        reason = exc.message + (" (the hub is unreachable and it is not cached)" if offline else "")
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
    return _load(settings, str(path))


def _load(settings: Settings, model: str, *, offline: bool = False) -> CsmEngine:
    return CsmEngine.load(
        model,
        device=settings.device,
        offline=offline,
        max_batch=settings.max_batch,
        compile=settings.compile,
    )
