"""Parley's own CSM frame loop: many turns at once, one backbone step and one depth pass a frame.

transformers' ``generate`` runs a nested ``depth_decoder.generate`` for every frame and serves one
prompt at a time. ``FrameLoop`` drives the same modules (the backbone's and the depth decoder's
``CsmDecoderLayer`` stacks, embeddings, norms and heads, so the arithmetic is transformers' own)
with caches it owns:

- a backbone KV cache with one slot per batch row (``max_batch × max_positions``), allocated once;
  rows are kept packed in slots ``0..B-1`` so a step attends over plain slices, and each row sits
  at its own position (a boolean mask hides what a shorter row has not written);
- a depth-decoder KV cache for the ``num_codebooks`` positions of one frame, shared by all rows
  (every row is at the same depth position);
- rotary tables computed once for all positions.

Turns join between frames (``admit`` prefills the new row alone) and leave between frames
(``remove`` moves the last row into the hole). Per frame there is one host round trip: the new
codes of every row, needed anyway to stream them and to see end frames.

Sampling follows ``generate``'s processors (suppressed ids, temperature, top-k) per row; each row
draws from its own ``torch.Generator`` (seeded by the turn's seed), so a turn's codes do not
depend on which other turns share its batch. Greedy rows take the arg-max and equal ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import CsmForConditionalGeneration

from worker.engine.hf import cache_keyword, config_int
from worker.engine.types import SamplingParams


class _SlotCache:
    """Per-layer key/value tensors ``(slots, kv_heads, length, head_dim)``, written in place.

    Decoder layers call ``update(key, value, layer_idx)`` (the duck-typed part of transformers'
    ``Cache`` that attention uses) and attend over what it returns. Before each forward the loop
    says where the rows write: a block of consecutive positions shared by the rows in slots
    ``first..first+B-1`` (``set_block``), or one position per row of slots ``0..B-1``
    (``set_rows``).
    """

    def __init__(
        self,
        *,
        layers: int,
        slots: int,
        kv_heads: int,
        length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        shape = (slots, kv_heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self._rows: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._span = 0
        self._first = 0
        self._start = 0

    def set_block(self, first: int, start: int) -> None:
        """Rows in slots ``first..`` write positions ``start..`` and attend up to their end."""
        self._rows, self._first, self._start = None, first, start

    def set_rows(self, rows: torch.Tensor, positions: torch.Tensor, span: int) -> None:
        """Row ``i`` (slot ``rows[i]``) writes ``positions[i]``; all attend ``[0, span)``."""
        self._rows, self._positions, self._span = rows, positions, span

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_: Any, **__: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's keys and values; return the span attention reads."""
        k, v = self.keys[layer_idx], self.values[layer_idx]
        b = key.shape[0]
        if self._rows is None:
            first, start, end = self._first, self._start, self._start + key.shape[2]
            k[first : first + b, :, start:end] = key
            v[first : first + b, :, start:end] = value
            return k[first : first + b, :, :end], v[first : first + b, :, :end]
        assert self._positions is not None
        k[self._rows, :, self._positions] = key[:, :, 0]
        v[self._rows, :, self._positions] = value[:, :, 0]
        return k[:b, :, : self._span], v[:b, :, : self._span]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy slot ``src``'s first ``length`` positions into slot ``dst`` (packing rows)."""
        for k, v in zip(self.keys, self.values, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def swap(self, a: int, b: int, length: int) -> None:
        """Exchange the first ``length`` positions of slots ``a`` and ``b``."""
        for t in (*self.keys, *self.values):
            t[[a, b], :, :length] = t[[b, a], :, :length]


@dataclass
class Row:
    """A turn in the batch. ``position`` is how many backbone positions its cache holds."""

    key: object
    params: SamplingParams
    position: int
    generator: torch.Generator
    frames: int = 0
    # Set by admit: the prefill's last hidden state and codebook-0 logits, used by the next step.
    pending: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass(frozen=True)
class FrameResult:
    """What one step made for one row: its new frame (None for the end frame) and whether the
    row is done (end frame, or ``max_frames`` reached)."""

    key: object
    frame: torch.Tensor | None
    done: bool


def _suppress_mask(ids: object, vocab: int, device: torch.device) -> torch.Tensor | None:
    if not ids:
        return None
    mask = torch.zeros(vocab, dtype=torch.bool, device=device)
    mask[torch.tensor(list(ids), dtype=torch.long, device=device)] = True  # type: ignore[call-overload]
    return mask


class FrameLoop:
    """Generates frames for up to ``max_batch`` turns at once; not thread-safe (one owner)."""

    def __init__(self, model: CsmForConditionalGeneration, *, max_batch: int) -> None:
        """Allocate caches and tables for ``max_batch`` rows of ``max_position_embeddings``."""
        config: Any = model.config
        depth: Any = model.depth_decoder
        self._model = model
        self._backbone: Any = model.backbone_model
        self._depth_model: Any = depth.model
        self._depth_head = depth.codebooks_head.weight  # (n_q - 1, hidden, vocab)
        # backbone and depth decoder share one layer class, so one keyword serves both
        self._cache_keyword = cache_keyword(self._backbone.layers[0].forward)
        self.max_batch = max_batch
        self.num_codebooks = config_int(config.num_codebooks, "num_codebooks")
        self.max_positions = config_int(config.max_position_embeddings, "max_position_embeddings")
        self.vocab = config_int(config.vocab_size, "vocab_size")
        self.eos = config_int(config.codebook_eos_token_id, "codebook_eos_token_id")
        device, dtype = model.device, model.dtype
        self.device = device
        dconf: Any = depth.config
        self._cache = self._new_cache(config, max_batch, self.max_positions, dtype, device)
        self._depth_cache = self._new_cache(dconf, max_batch, self.num_codebooks, dtype, device)
        with torch.no_grad():
            probe = torch.zeros(1, dtype=dtype, device=device)
            positions = torch.arange(self.max_positions, device=device)[None]
            cos, sin = self._backbone.rotary_emb(probe, positions)
            self._cos, self._sin = cos[0], sin[0]  # (max_positions, head_dim)
            dpos = torch.arange(self.num_codebooks, device=device)[None]
            dcos, dsin = self._depth_model.rotary_emb(probe, dpos)
            self._dcos, self._dsin = dcos[0], dsin[0]
        self.rows: list[Row] = []
        self._row_index = torch.arange(max_batch, device=device)
        self._last = torch.zeros(max_batch, self.num_codebooks, dtype=torch.long, device=device)
        self._params_cache: tuple[Any, ...] | None = None

    @staticmethod
    def _new_cache(
        config: Any, slots: int, length: int, dtype: torch.dtype, device: torch.device
    ) -> _SlotCache:
        heads = config_int(config.num_attention_heads, "num_attention_heads")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return _SlotCache(
            layers=config_int(config.num_hidden_layers, "num_hidden_layers"),
            slots=slots,
            kv_heads=config_int(config.num_key_value_heads, "num_key_value_heads"),
            length=length,
            head_dim=head_dim,
            dtype=dtype,
            device=device,
        )

    # ------------------------------------------------------------------ batch membership

    @property
    def free_slots(self) -> int:
        return self.max_batch - len(self.rows)

    @torch.no_grad()
    def admit(self, key: object, inputs_embeds: torch.Tensor, params: SamplingParams) -> Row:
        """Prefill a new row from its prompt embeddings ``(1, L, hidden)``; it joins the batch.

        Raises:
            ValueError: No free slot, or prompt plus ``max_frames`` exceeds the position budget.
        """
        if len(self.rows) >= self.max_batch:
            raise ValueError("the batch is full")
        length = inputs_embeds.shape[1]
        if length + params.max_frames > self.max_positions:
            raise ValueError(
                f"prompt of {length} positions plus {params.max_frames} frames exceeds "
                f"{self.max_positions} positions"
            )
        slot = len(self.rows)
        self._cache.set_block(slot, 0)
        cos, sin = self._cos[None, :length], self._sin[None, :length]
        hidden = self._layers(self._backbone, inputs_embeds, (cos, sin), None, self._cache)
        last = hidden[:, -1]  # (1, hidden), normed
        logits = self._model.lm_head(last)
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        row = Row(key=key, params=params, position=length, generator=generator)
        row.pending = (last, logits)
        self.rows.append(row)
        self._params_cache = None
        return row

    def remove(self, key: object) -> None:
        """Drop a row (finished, cancelled or failed); the last row moves into its slot."""
        index = next((i for i, r in enumerate(self.rows) if r.key == key), None)
        if index is None:
            return
        last = len(self.rows) - 1
        if index != last:
            moved = self.rows[last]
            self._cache.move(last, index, moved.position)
            self._last[index] = self._last[last]
            self.rows[index] = moved
        self.rows.pop()
        self._params_cache = None

    # ------------------------------------------------------------------ one frame

    @torch.no_grad()
    def step(self) -> list[FrameResult]:
        """Generate one frame for every row; rows that are done are removed before returning."""
        rows = self.rows
        if not rows:
            return []
        self._pack_fresh_last()
        fresh = [i for i, r in enumerate(rows) if r.pending is not None]
        n_old = len(rows) - len(fresh)  # the rows that continue: slots 0..n_old-1
        hiddens, logits = [], []
        if n_old:
            h, lg = self._backbone_step(n_old)
            hiddens.append(h)
            logits.append(lg)
        for i in fresh:
            pending = rows[i].pending
            assert pending is not None
            hiddens.append(pending[0])
            logits.append(pending[1])
            rows[i].pending = None
        hidden = torch.cat(hiddens) if len(hiddens) > 1 else hiddens[0]
        scores = torch.cat(logits) if len(logits) > 1 else logits[0]
        frames = self._depth_frame(hidden, scores)  # (B, n_q)
        b = len(rows)
        self._last[:b] = frames
        host = frames.cpu()
        results: list[FrameResult] = []
        for i, row in enumerate(rows):
            row.position += 1 if i < n_old else 0
            frame = host[i]
            if bool((frame[:-1] == self.eos).all()):
                results.append(FrameResult(row.key, None, True))
                continue
            row.frames += 1
            results.append(FrameResult(row.key, frame, row.frames >= row.params.max_frames))
        for result in results:
            if result.done:
                self.remove(result.key)
        return results

    def _pack_fresh_last(self) -> None:
        """Keep rows that have not made a frame yet after those that have (admission appends
        them; a removal can move one forward), so a backbone step runs over a plain prefix."""
        rows = self.rows
        i, j = 0, len(rows) - 1
        while True:
            while i < j and rows[i].pending is None:  # the first fresh row from the front
                i += 1
            while i < j and rows[j].pending is not None:  # the last old row from the back
                j -= 1
            if i >= j:
                return
            self._cache.swap(i, j, max(rows[i].position, rows[j].position))
            self._last[[i, j]] = self._last[[j, i]]
            rows[i], rows[j] = rows[j], rows[i]
            self._params_cache = None
            i, j = i + 1, j - 1

    def _backbone_step(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One backbone position for rows ``0..b-1``, from each row's last frame."""
        rows = self.rows[:b]
        positions = torch.tensor([r.position for r in rows], device=self.device)
        span = max(r.position for r in rows) + 1
        self._cache.set_rows(self._row_index[:b], positions, span)
        embeds = self._backbone.embed_tokens(self._last[:b, None])  # (b, 1, hidden)
        cos, sin = self._cos[positions][:, None], self._sin[positions][:, None]
        mask = None
        if b > 1 and any(r.position != span - 1 for r in rows):
            keys = torch.arange(span, device=self.device)
            mask = (keys[None, :] <= positions[:, None])[:, None, None, :]
        hidden = self._layers(self._backbone, embeds, (cos, sin), mask, self._cache)[:, -1]
        return hidden, self._model.lm_head(hidden)

    def _depth_frame(self, hidden: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Codebook 0 from the backbone's scores, then the depth decoder's codebooks 1..n_q-1.

        Depth position 0 holds the backbone's last hidden state and position ``p >= 1`` the
        code of codebook ``p - 1`` (embedded with offset ``(p - 1) * vocab``); the output at
        position ``p`` predicts codebook ``p`` through head ``p - 1``.
        """
        temperature, top_k, greedy, noise, backbone_suppress, depth_suppress = self._sampling()
        depth, cache = self._depth_model, self._depth_cache
        codes = [self._pick(scores, 0, temperature, top_k, greedy, noise, backbone_suppress)]
        x = torch.stack([hidden, depth.embed_tokens(codes[0])], dim=1)
        rope = (self._dcos[None, :2], self._dsin[None, :2])
        for p in range(1, self.num_codebooks):
            cache.set_block(0, 0 if p == 1 else p)
            if p > 1:
                x = depth.embed_tokens(codes[-1] + (p - 1) * self.vocab)[:, None]
                rope = (self._dcos[None, p : p + 1], self._dsin[None, p : p + 1])
            h = self._layers(depth, depth.inputs_embeds_projector(x), rope, None, cache)
            logits = nn.functional.linear(h[:, -1], self._depth_head[p - 1].T)
            codes.append(self._pick(logits, p, temperature, top_k, greedy, noise, depth_suppress))
        return torch.stack(codes, dim=1)

    def _layers(
        self,
        stack: Any,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: Any,
        cache: Any,
    ) -> torch.Tensor:
        kwargs = {self._cache_keyword: cache}
        for layer in stack.layers:
            x = layer(x, attention_mask=mask, position_embeddings=rope, **kwargs)
        return stack.norm(x)

    # ------------------------------------------------------------------ sampling

    def _sampling(self) -> tuple[Any, ...]:
        """Per-row sampling tensors and this frame's noise (drawn from each row's generator)."""
        if self._params_cache is None:
            rows, device = self.rows, self.device
            temperature = torch.tensor(
                [1.0 if r.params.greedy else r.params.temperature for r in rows], device=device
            )
            top_k = torch.tensor(
                [min(r.params.top_k or self.vocab, self.vocab) for r in rows], device=device
            )
            greedy = torch.tensor([r.params.greedy for r in rows], device=device)
            backbone = _suppress_mask(
                self._model.generation_config.suppress_tokens, self.vocab, device
            )
            depth = _suppress_mask(
                self._model.depth_decoder.generation_config.suppress_tokens, self.vocab, device
            )
            all_greedy = all(r.params.greedy for r in rows)  # a host bool: no sync per frame
            self._params_cache = (temperature[:, None], top_k, greedy, all_greedy, backbone, depth)
        temperature, top_k, greedy, all_greedy, backbone, depth = self._params_cache
        noise = None
        if not all_greedy:
            shape = (self.num_codebooks, self.vocab)
            noise = torch.stack(
                [
                    torch.empty(shape, device=self.device).exponential_(generator=r.generator)
                    for r in self.rows
                ]
            )
        return temperature, top_k, greedy, noise, backbone, depth

    def _pick(
        self,
        logits: torch.Tensor,
        codebook: int,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        greedy: torch.Tensor,
        noise: torch.Tensor | None,
        suppress: torch.Tensor | None,
    ) -> torch.Tensor:
        """One code per row: arg-max for greedy rows, a top-k/temperature sample for the rest."""
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
        sampled = (probs / noise[:, codebook]).argmax(dim=-1)
        return torch.where(greedy, best, sampled)
