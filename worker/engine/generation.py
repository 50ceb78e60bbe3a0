"""Generation helpers: ``generate`` kwargs from ``SamplingParams``, and per-frame callbacks.

CSM's ``generate`` keeps only ``MaxLengthCriteria`` among stopping criteria (others are dropped
with a log line), so per-frame progress and cancellation go through a streamer instead: the
backbone loop hands each new code frame to ``streamer.put``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from worker.engine.types import SamplingParams


def generate_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for ``CsmForConditionalGeneration.generate``.

    Every sampling knob is set for the backbone AND the depth decoder on every call:
    ``depth_decoder_*`` kwargs are written into ``model.depth_decoder.generation_config`` and
    persist, so leaving one out would inherit the previous call's value. For greedy decoding the
    sampling-only knobs are reset to ``None`` (nothing to warn about, nothing left behind).
    """
    if params.greedy:
        sampling: dict[str, Any] = {"do_sample": False, "temperature": None, "top_k": None}
    else:
        sampling = {"do_sample": True, "temperature": params.temperature, "top_k": params.top_k}
    kwargs: dict[str, Any] = {"max_new_tokens": params.max_frames}
    for key, value in sampling.items():
        kwargs[key] = value
        kwargs[f"depth_decoder_{key}"] = value
    return kwargs


class GenerationCancelled(Exception):
    """Raised from inside ``generate`` to stop it early (the caller's ``on_frame`` said so)."""


class FrameStreamer(BaseStreamer):
    """Collects generated code frames and reports each one to an ``on_frame`` callback.

    ``on_frame(frame)`` is called with each new frame's codes ``(num_codebooks,)`` int64, except the
    end frame; when it returns True, ``put`` raises ``GenerationCancelled``, which unwinds
    ``generate``; the frames so far stay in ``frames``. An exception raised by the callback
    itself is kept in ``callback_error`` (and generation unwinds the same way).
    """

    def __init__(
        self,
        num_codebooks: int,
        codebook_eos_id: int,
        on_frame: Callable[[np.ndarray], bool] | None,
    ) -> None:
        """Set up an empty collector; see the class docstring."""
        self._num_codebooks = num_codebooks
        self._eos = codebook_eos_id
        self._on_frame = on_frame
        self.frames: list[torch.Tensor] = []
        self.ended = False
        self.callback_error: BaseException | None = None

    def put(self, value: torch.Tensor) -> None:
        """Receive one frame ``(1, num_codebooks)`` (or, once, the empty prompt ids: ignored)."""
        if value.ndim != 2 or value.shape[-1] != self._num_codebooks or value.shape[0] != 1:
            return
        frame = value[0]
        # The end test CSM's own loop applies: every codebook but the last is the end code.
        if bool((frame[:-1] == self._eos).all()):
            self.ended = True
            return
        self.frames.append(frame.clone())
        if self._on_frame is None:
            return
        try:
            stop = self._on_frame(frame.cpu().numpy().astype(np.int64))
        except BaseException as exc:  # re-raised unchanged by the engine
            self.callback_error = exc
            raise GenerationCancelled from exc
        if stop:
            raise GenerationCancelled

    def end(self) -> None:
        """Generation finished normally; nothing to flush."""
