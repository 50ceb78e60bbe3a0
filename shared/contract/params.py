"""A turn's sampling params, with their defaults defined here and nowhere else.

The API's request schemas take their defaults from :class:`TurnParams`; the API stores a
turn's params as a JSON object in SQL; the worker reads that object back once, with
:meth:`TurnParams.from_json`, filling in the defaults for keys it lacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class TurnParams:
    """How to sample one turn; the same params drive the backbone and the depth decoder.

    Attributes:
        temperature: Softmax temperature; 0 means greedy.
        top_k: Keep only the k most likely codes at each step.
        max_audio_length_ms: The turn's most audio; None (or 0) means the server's default.
        seed: Seed the sampler for reproducible output; None means unseeded.
    """

    temperature: float = 0.9
    top_k: int = 50
    max_audio_length_ms: int | None = None
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> TurnParams:
        """Params as stored (or queued): missing keys take their defaults."""
        raw = raw or {}
        return cls(
            temperature=float(raw.get("temperature", cls.temperature)),
            top_k=int(raw.get("top_k", cls.top_k)),
            max_audio_length_ms=raw.get("max_audio_length_ms"),
            seed=raw.get("seed"),
        )
