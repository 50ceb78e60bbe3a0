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

The backbone step and the depth pass run through a :class:`StepRunner`: eagerly (``compile``
"off"), or padded to batch buckets and run compiled or replayed from CUDA graphs. Padded rows
write their keys and values to a scratch slot past the real ones and their outputs are dropped.

Sampling follows ``generate``'s processors (suppressed ids, temperature, top-k) per row; each row
draws from its own ``torch.Generator`` (seeded by the turn's seed), so a turn's codes do not
depend on which other turns share its batch. Greedy rows take the arg-max and equal ``generate``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import CsmForConditionalGeneration

from worker.engine.hf import cache_keyword, config_int
from worker.engine.kv_slots import SlotCache
from worker.engine.sampling import RowSampling, pick
from worker.engine.step_graphs import (
    CompileMode,
    StepRunner,
    batch_buckets,
    bucket_for,
    span_for,
)
from worker.engine.types import SamplingParams


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


class FrameLoop:
    """Generates frames for up to ``max_batch`` turns at once; not thread-safe (one owner)."""

    def __init__(
        self, model: CsmForConditionalGeneration, *, max_batch: int, compile: CompileMode = "off"
    ) -> None:
        """Allocate caches and tables for ``max_batch`` rows of ``max_position_embeddings``;
        ``compile`` says how the fixed-shape steps run (see ``worker.engine.step_graphs``)."""
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
        self._steps = StepRunner(compile, device)
        self._buckets = batch_buckets(max_batch)
        self._scratch = max_batch  # the slot padded rows write to (allocated when padding)
        slots = max_batch + 1 if self._steps.pads else max_batch
        self._cache = self._new_cache(config, slots, self.max_positions, dtype, device)
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
        # Each row's sampling noise for a frame, drawn in place from its own generator.
        noise_shape = (max_batch, self.num_codebooks, self.vocab)
        self._noise = torch.ones(noise_shape, device=device)
        self._params_cache: RowSampling | None = None
        # Ids never picked, from the generation configs (read again when the batch changes;
        # updated in place, since captured graphs read these very tensors).
        self._backbone_suppress = torch.zeros(self.vocab, dtype=torch.bool, device=device)
        self._depth_suppress = torch.zeros(self.vocab, dtype=torch.bool, device=device)
        self._suppressed: tuple[tuple[Any, ...], ...] | None = None
        self._positions_table = torch.arange(self.max_positions, device=device)

    @property
    def compile_mode(self) -> CompileMode:
        """How the fixed-shape steps run."""
        return self._steps.mode

    @torch.no_grad()
    def warm_up(self, *, max_span: int | None = None, batches: Sequence[int] | None = None) -> int:
        """Compile or capture the steps of every batch bucket (or of those holding
        ``batches``) and span bucket up to ``max_span`` (default all) now, so no turn waits for
        it; returns the number of shapes prepared. Touches only the scratch slot and the depth
        cache, never a row's state. Eager: nothing to do."""
        if not self._steps.pads or self.rows:
            return 0
        self._read_suppressed()
        before = self._steps.captured
        limit = min(max_span or self.max_positions, self.max_positions)
        spans = sorted({span_for(s, self.max_positions) for s in range(1, limit + 1)})
        buckets = (
            self._buckets if batches is None else {bucket_for(b, self._buckets) for b in batches}
        )
        for n in sorted(buckets):
            slots = torch.full((n,), self._scratch, device=self.device)
            positions = torch.zeros(n, dtype=torch.long, device=self.device)
            for span in spans:
                keys = self._positions_table[:span]
                self._steps.run(
                    "backbone",
                    self._backbone_pass,
                    (n, span),
                    self._last[:n],
                    slots,
                    positions,
                    keys,
                )
            hidden, scores = self._backbone_pass(self._last[:n], slots, positions, keys)
            for greedy in (True, False):
                params = [] if greedy else [SamplingParams(temperature=1.0)]
                sampling = RowSampling.of(params, vocab=self.vocab, rows=n, device=self.device)
                self._run_depth(hidden, scores, sampling)
        return self._steps.captured - before

    @staticmethod
    def _new_cache(
        config: Any, slots: int, length: int, dtype: torch.dtype, device: torch.device
    ) -> SlotCache:
        heads = config_int(config.num_attention_heads, "num_attention_heads")
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return SlotCache(
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
        return self.admit_many([(key, inputs_embeds, params)])[0]

    def check_admissible(self, inputs_embeds: torch.Tensor, params: SamplingParams) -> None:
        """Raise ValueError when prompt plus ``max_frames`` exceeds the position budget."""
        length = inputs_embeds.shape[1]
        if length + params.max_frames > self.max_positions:
            raise ValueError(
                f"prompt of {length} positions plus {params.max_frames} frames exceeds "
                f"{self.max_positions} positions"
            )

    @torch.no_grad()
    def admit_many(self, joins: Sequence[tuple[object, torch.Tensor, SamplingParams]]) -> list[Row]:
        """Prefill several new rows in one forward pass; they join the batch in order.

        Prompts of different lengths are right-padded to the longest: with a causal mask a real
        position never sees a padded one, and what padded positions leave in a row's cache lies
        past its position, where later steps overwrite it before any step may read it. One pass
        costs about what one prompt does where kernel launches dominate (a GPU), so a burst of
        new turns does not stall the running ones for one prefill each.

        Raises:
            ValueError: Not enough free slots, or a row's prompt plus ``max_frames`` exceeds
                the position budget (nothing is admitted then).
        """
        if len(self.rows) + len(joins) > self.max_batch:
            raise ValueError("the batch is full")
        for _, embeds, params in joins:
            self.check_admissible(embeds, params)
        lengths = [embeds.shape[1] for _, embeds, _ in joins]
        longest = max(lengths)
        if len(joins) == 1:
            x = joins[0][1]
        else:
            x = joins[0][1].new_zeros(len(joins), longest, joins[0][1].shape[-1])
            for i, (_, embeds, _) in enumerate(joins):
                x[i, : lengths[i]] = embeds[0]
        self._cache.set_block(len(self.rows), 0)
        cos, sin = self._cos[None, :longest], self._sin[None, :longest]
        hidden = self._layers(self._backbone, x, (cos, sin), None, self._cache)
        ends = torch.tensor(lengths, device=self.device) - 1
        last = hidden[torch.arange(len(joins), device=self.device), ends]  # (k, hidden), normed
        logits = self._model.lm_head(last)
        rows = []
        for i, (key, _, params) in enumerate(joins):
            generator = torch.Generator(device=self.device)
            if params.seed is not None:
                generator.manual_seed(params.seed)
            else:
                generator.seed()
            row = Row(key=key, params=params, position=lengths[i], generator=generator)
            row.pending = (last[i : i + 1], logits[i : i + 1])
            rows.append(row)
        self.rows.extend(rows)
        self._params_cache = None
        return rows

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
        positions_host = [r.position for r in self.rows[:b]]
        span = max(positions_host) + 1
        if self._steps.pads:
            return self._padded_backbone_step(positions_host, span)
        positions = torch.tensor(positions_host, device=self.device)
        self._cache.set_rows(self._row_index[:b], positions, span)
        embeds = self._backbone.embed_tokens(self._last[:b, None])  # (b, 1, hidden)
        cos, sin = self._cos[positions][:, None], self._sin[positions][:, None]
        mask = None
        if b > 1 and any(p != span - 1 for p in positions_host):
            keys = torch.arange(span, device=self.device)
            mask = (keys[None, :] <= positions[:, None])[:, None, None, :]
        hidden = self._layers(self._backbone, embeds, (cos, sin), mask, self._cache)[:, -1]
        return hidden, self._model.lm_head(hidden)

    def _padded_backbone_step(
        self, positions_host: list[int], span: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone step padded to a batch bucket and a span bucket, through the runner."""
        b = len(positions_host)
        n = bucket_for(b, self._buckets)
        padded_span = span_for(span, self.max_positions)
        pad = n - b
        both = torch.tensor(  # one host-to-device copy for positions and slots
            [positions_host + [0] * pad, list(range(b)) + [self._scratch] * pad],
            device=self.device,
        )
        hidden, logits = self._steps.run(
            "backbone",
            self._backbone_pass,
            (n, padded_span),
            self._last[:n],
            both[1],
            both[0],
            self._positions_table[:padded_span],
        )
        return hidden[:b], logits[:b]

    def _backbone_pass(
        self, last: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fixed-shape backbone step: row ``i`` embeds ``last[i]``, writes its keys and values at
        ``positions[i]`` of slot ``slots[i]`` and attends ``keys`` (``0..span-1``) up to there."""
        self._cache.set_rows(slots, positions, keys.shape[0])
        embeds = self._backbone.embed_tokens(last[:, None])
        cos, sin = self._cos[positions][:, None], self._sin[positions][:, None]
        mask = (keys[None, :] <= positions[:, None])[:, None, None, :]
        hidden = self._layers(self._backbone, embeds, (cos, sin), mask, self._cache)[:, -1]
        return hidden, self._model.lm_head(hidden)

    def _depth_frame(self, hidden: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Every row's frame: the depth pass (below) on the backbone's output, padded to a
        batch bucket when the runner pads."""
        b = hidden.shape[0]
        sampling = self._sampling()
        if not sampling.all_greedy:
            for i, row in enumerate(self.rows):
                self._noise[i].exponential_(generator=row.generator)
        if self._steps.pads:
            pad = sampling.greedy.shape[0] - b
            hidden = nn.functional.pad(hidden, (0, 0, 0, pad))
            scores = nn.functional.pad(scores, (0, 0, 0, pad))
        return self._run_depth(hidden, scores, sampling)[:b]

    def _run_depth(
        self, hidden: torch.Tensor, scores: torch.Tensor, sampling: RowSampling
    ) -> torch.Tensor:
        n = hidden.shape[0]
        inputs = [hidden, scores, sampling.temperature, sampling.top_k, sampling.greedy]
        if not sampling.all_greedy:
            inputs.append(self._noise[:n])
        return self._steps.run("depth", self._depth_pass, (n, sampling.all_greedy), *inputs)

    def _depth_pass(
        self,
        hidden: torch.Tensor,
        scores: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        greedy: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Codebook 0 from the backbone's scores, then the depth decoder's codebooks 1..n_q-1.

        Depth position 0 holds the backbone's last hidden state and position ``p >= 1`` the
        code of codebook ``p - 1`` (embedded with offset ``(p - 1) * vocab``); the output at
        position ``p`` predicts codebook ``p`` through head ``p - 1``. ``noise`` is
        ``(n, num_codebooks, vocab)`` (None: every row greedy).
        """
        depth, cache = self._depth_model, self._depth_cache
        rule = (temperature, top_k, greedy)
        codes = [pick(scores, rule, _codebook(noise, 0), self._backbone_suppress)]
        x = torch.stack([hidden, depth.embed_tokens(codes[0])], dim=1)
        rope = (self._dcos[None, :2], self._dsin[None, :2])
        for p in range(1, self.num_codebooks):
            cache.set_block(0, 0 if p == 1 else p)
            if p > 1:
                x = depth.embed_tokens(codes[-1] + (p - 1) * self.vocab)[:, None]
                rope = (self._dcos[None, p : p + 1], self._dsin[None, p : p + 1])
            h = self._layers(depth, depth.inputs_embeds_projector(x), rope, None, cache)
            logits = nn.functional.linear(h[:, -1], self._depth_head[p - 1].T)
            codes.append(pick(logits, rule, _codebook(noise, p), self._depth_suppress))
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

    def _sampling(self) -> RowSampling:
        """The rows' sampling settings (padded to the batch bucket when padding); kept until
        the batch's membership or order changes."""
        if self._params_cache is None:
            self._read_suppressed()
            b = len(self.rows)
            rows = bucket_for(b, self._buckets) if self._steps.pads else b
            params = [r.params for r in self.rows]
            self._params_cache = RowSampling.of(
                params, vocab=self.vocab, rows=rows, device=self.device
            )
        return self._params_cache

    def _read_suppressed(self) -> None:
        configs = (self._model.generation_config, self._model.depth_decoder.generation_config)
        ids = tuple(tuple(c.suppress_tokens or ()) for c in configs)
        if ids == self._suppressed:
            return
        for mask, suppressed in zip(
            (self._backbone_suppress, self._depth_suppress), ids, strict=True
        ):
            mask.zero_()
            if suppressed:
                mask[torch.tensor(suppressed, dtype=torch.long, device=self.device)] = True
        self._suppressed = ids


def _codebook(noise: torch.Tensor | None, p: int) -> torch.Tensor | None:
    return None if noise is None else noise[:, p]
