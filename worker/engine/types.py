"""Plain data the engine takes: context turns (text + cached Mimi codes) and sampling settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shared.contract.params import TurnParams
from shared.errors import EngineError

OnFrame = Callable[[np.ndarray, np.ndarray], bool]
"""A generated turn's callback: ``on_frame(frame, audio)`` with the frame's codes
``(num_codebooks,)`` int64 and its decoded samples (``frame_samples`` float32, the continuation
of the turn's audio); it returns True to stop generating."""


def bad_input(message: str, *, code: str = "invalid_input") -> EngineError:
    """An ``EngineError`` for input the engine refuses (bad codes, audio, speaker, params)."""
    return EngineError(message, code=code)


@dataclass(frozen=True)
class ContextTurn:
    """One earlier turn of the conversation, as the model sees it.

    Attributes:
        speaker: Speaker id (a non-negative integer; CSM's chat roles are speaker ids).
        text: What was said.
        codes: The turn's audio as Mimi codes, shape ``(frames, num_codebooks)``, integers in
            ``[0, codebook_size)``; as returned by ``CsmEngine.encode`` or ``CsmEngine.generate``.
    """

    speaker: int
    text: str
    codes: np.ndarray


@dataclass(frozen=True)
class SamplingParams:
    """How to sample a new turn.

    Attributes:
        temperature: Softmax temperature for the backbone and the depth decoder; 0 means greedy.
        top_k: Keep only the k most likely codes at each step (0 disables top-k).
        max_frames: Upper bound on generated frames (12.5 frames per second of audio).
        seed: Seed the torch RNG right before generating, for reproducible sampling.
    """

    temperature: float = TurnParams.temperature
    top_k: int = TurnParams.top_k
    max_frames: int = 125
    seed: int | None = TurnParams.seed

    @classmethod
    def from_turn(cls, params: TurnParams, *, max_frames: int) -> SamplingParams:
        """How to sample a turn with these params, for at most ``max_frames`` frames."""
        return cls(
            temperature=params.temperature,
            top_k=params.top_k,
            max_frames=max_frames,
            seed=params.seed,
        )

    @property
    def greedy(self) -> bool:
        """True when the temperature asks for greedy decoding."""
        return self.temperature == 0
