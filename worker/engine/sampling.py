"""Per-row sampling for the frame loop, as batched tensors.

The rules are ``generate``'s processors: suppressed ids, temperature, top-k. Greedy rows take the
arg-max (and equal ``generate``); the others draw by the exponential race from noise drawn per row
from the row's own generator, so a row's codes do not depend on its neighbours. Rows past the
real ones (padding to a batch bucket) are greedy with temperature 1 and top-k 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from worker.engine.types import SamplingParams


@dataclass(frozen=True)
class RowSampling:
    """Sampling settings of a batch's rows: ``temperature`` ``(n, 1)``, ``top_k`` ``(n,)``,
    ``greedy`` ``(n,)`` bool; ``all_greedy`` is a host bool (no device sync per frame)."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    greedy: torch.Tensor
    all_greedy: bool

    @classmethod
    def of(
        cls, params: Sequence[SamplingParams], *, vocab: int, rows: int, device: torch.device
    ) -> RowSampling:
        """Settings for ``params`` (one per real row), padded to ``rows`` rows."""
        pad = rows - len(params)
        temperature = [1.0 if p.greedy else p.temperature for p in params] + [1.0] * pad
        top_k = [min(p.top_k or vocab, vocab) for p in params] + [1] * pad
        greedy = [p.greedy for p in params] + [True] * pad
        return cls(
            temperature=torch.tensor(temperature, device=device)[:, None],
            top_k=torch.tensor(top_k, device=device),
            greedy=torch.tensor(greedy, device=device),
            all_greedy=all(p.greedy for p in params),
        )


def pick(
    logits: torch.Tensor,
    rule: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    noise: torch.Tensor | None,
    suppress: torch.Tensor | None,
) -> torch.Tensor:
    """One code per row from ``logits`` ``(n, vocab)``: arg-max for greedy rows, a top-k /
    temperature sample for the rest (``noise`` ``(n, vocab)``, Exp(1) draws; None: all greedy).
    ``rule`` is a :class:`RowSampling`'s ``(temperature, top_k, greedy)`` tensors (a step
    function takes tensors only, see ``step_graphs``)."""
    temperature, top_k, greedy = rule
    scores = logits.float()
    if suppress is not None:
        scores = scores.masked_fill(suppress, float("-inf"))
    best = scores.argmax(dim=-1)
    if noise is None:
        return best
    scaled = scores / temperature
    ranked = scaled.sort(dim=-1, descending=True).values
    kth = ranked.gather(1, (top_k - 1)[:, None])
    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p (as multinomial would).
    sampled = (probs / noise).argmax(dim=-1)
    return torch.where(greedy, best, sampled)
