"""Batched streaming Mimi decoding: one decoder pass for the new frames of every active turn.

``StreamingDecoder`` (``codec_stream``) keeps one turn's streaming state and decodes that turn
alone, so ``n`` turns cost ``n`` small, launch-bound decoder calls per frame.
``BatchedStreamingDecoder`` keeps the same state for up to ``max_rows`` turns in batched tensors
whose first dimension is the slot, and decodes the new frames of all of them in one pass through
the codec's own modules and weights. Rows are packed in slots ``0..n-1`` (as in ``FrameLoop``):
a row joins in the next slot with the state a fresh ``StreamingDecoder`` starts from, and a row
that leaves is replaced by the last one. Per slot:

- SEANet causal convolutions: their last ``(kernel - 1) * dilation`` input samples, zeros at
  the start (pad mode "constant"), or the first input sample (pad mode "replicate");
- causal transposed convolutions (``upsample`` and SEANet's): their overlap-add tail, zeros at
  the start (adding zeros is what the per-turn decoder's missing tail amounts to);
- the decoder transformer: a ring of ``sliding_window - 1 + 2 * max_chunk_frames`` key/value
  entries per layer, the position each entry holds, and the row's next position. Rotary
  embeddings use each row's own positions; a per-row boolean mask lets a step see exactly the
  keys the per-turn sliding-window cache would (``q - sliding_window < p <= q``).

Nothing mixes rows: convolutions, linear layers, layer norms and attention treat every batch
row separately, entries of a freshly joined row are zeroed (a stale value times a zero attention
weight could still be NaN), and masks are per row.

Exactness against ``StreamingDecoder``: one row alone is bit-exact (measured: the ring's masked
entries weigh exactly 0 and add nothing here). Among other rows it is not bit-exact, because the
decoder transformer's linear layers multiply ``n * steps`` rows at once, and the BLAS (MKL or
OpenBLAS on CPU, cuBLAS on CUDA) blocks a product by its shape, so a row's sums are rounded in
another order than with ``steps`` rows (on CUDA, cuDNN's convolutions may do the same; on CPU
the convolutions are batch-invariant once NNPACK is off, see ``_decode``). On the tiny
checkpoint, 16 rows measure 135-146 dB SNR per row against the per-turn decoder, max abs error
~4e-7 of the peak. A row's samples never depend on what its neighbours hold or on its slot: with
the same number of rows in the call they are bit-identical
(tests/unit/test_engine_codec_batch.py checks both). In bfloat16 on an H200 (csm-1b codec
shapes, random weights) one row alone was bit-exact too, 16 rows 97-100 dB and 64 rows 46 dB
against the per-turn decoder: bf16 round-off in other kernels, below the per-turn bf16 decoder's
own 40 dB against a float32 decode (batched bf16 measured 40.15 dB against it, per-turn 40.20
dB).

Frames of one call all have the same count; calls with more than ``max_chunk_frames`` frames
are decoded in pieces of at most that many.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiResnetBlock,
)

from shared.errors import EngineError
from worker.engine.codec_stream import check_codes, streamable_parts
from worker.engine.hf import cache_keyword
from worker.engine.types import bad_input

__all__ = ["BatchedStreamingDecoder"]


class _RingCache:
    """The decoder transformer's keys and values, ``(slots, kv_heads, entries, head_dim)`` per
    layer, and ``positions`` ``(slots, entries)``: the step each entry holds (-1: none).

    Layers call ``update(key, value, layer_idx)`` (the duck-typed part of transformers' ``Cache``
    that attention uses); :meth:`set_write` first says where this pass's steps go.
    """

    def __init__(
        self, *, layers: int, slots: int, kv_heads: int, entries: int, head_dim: int, like: Any
    ) -> None:
        shape = (slots, kv_heads, entries, head_dim)
        self.keys = [like.new_zeros(shape) for _ in range(layers)]
        self.values = [like.new_zeros(shape) for _ in range(layers)]
        self.positions = torch.full((slots, entries), -1, dtype=torch.long, device=like.device)
        self._rows = torch.zeros(0)
        self._entries = torch.zeros(0)

    def set_write(self, positions: torch.Tensor) -> None:
        """Rows ``0..n-1`` write steps ``positions`` ``(n, steps)``, each at ``step % size``."""
        n = positions.shape[0]
        self._rows = torch.arange(n, device=positions.device)[:, None]
        self._entries = positions % self.positions.shape[1]
        self.positions[self._rows, self._entries] = positions

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *_: Any, **__: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this pass's keys and values; return every entry of rows ``0..n-1``."""
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[self._rows, :, self._entries] = key.transpose(1, 2)
        v[self._rows, :, self._entries] = value.transpose(1, 2)
        n = key.shape[0]
        return k[:n], v[:n]


class BatchedStreamingDecoder:
    """Decode the new frames of many turns in one pass, each turn with its own streaming state.

    Keys identify rows (any hashable, e.g. a turn handle). For each row the concatenated output
    of :meth:`decode` equals what a fresh ``StreamingDecoder`` returns for the same frames (see
    the module docstring for how exactly), whatever other rows share the pass. Not thread-safe:
    one owner (the frame loop's thread) calls it. The codec's modules are only read.

    Attributes:
        max_rows: Rows it can hold.
        frame_samples: Output samples per frame (1920 at 24 kHz).
        num_codebooks: Codes per frame.
        codebook_size: Codes lie in ``[0, codebook_size)``.
    """

    def __init__(self, codec_model: Any, *, max_rows: int, max_chunk_frames: int = 4) -> None:
        """Allocate state for ``max_rows`` rows of ``codec_model`` (a transformers ``MimiModel``).

        Raises:
            EngineError: The codec cannot be streamed (see ``StreamingDecoder``), its decoder
                transformer has no sliding window, or uses an attention other than sdpa/eager.
        """
        if max_rows < 1 or max_chunk_frames < 1:
            raise ValueError("max_rows and max_chunk_frames must be >= 1")
        config = codec_model.config
        self._codec = codec_model
        self._upsample, self._transformer, self._seanet = streamable_parts(codec_model)
        tconf = self._transformer.config
        window = getattr(tconf, "sliding_window", None)
        if not isinstance(window, int) or window < 1:
            raise EngineError("batched streaming needs a decoder transformer with a sliding window")
        attention = getattr(tconf, "_attn_implementation", None) or "eager"
        if attention not in ("sdpa", "eager"):
            raise EngineError(f"batched streaming needs sdpa or eager attention, not {attention}")
        self._window = window
        self._bool_mask = attention == "sdpa"
        self.max_rows = max_rows
        self.num_codebooks = int(config.num_quantizers)
        self.codebook_size = int(config.codebook_size)
        self.frame_samples = int(round(config.sampling_rate / config.frame_rate))
        self._max_chunk = max_chunk_frames
        like = next(codec_model.parameters())
        self._history: dict[nn.Module, torch.Tensor] = {}
        self._tails: dict[nn.Module, torch.Tensor] = {}
        for layer in [self._upsample, *self._seanet.layers]:
            self._allocate(layer, like)
        steps_per_frame = self._steps_per_frame()
        heads = int(tconf.num_attention_heads)
        self._cache = _RingCache(
            layers=int(tconf.num_hidden_layers),
            slots=max_rows,
            kv_heads=int(getattr(tconf, "num_key_value_heads", None) or heads),
            entries=window - 1 + steps_per_frame * max_chunk_frames,
            head_dim=int(getattr(tconf, "head_dim", None) or tconf.hidden_size // heads),
            like=like,
        )
        self._next_step = torch.zeros(max_rows, dtype=torch.long, device=like.device)
        self._replicate = any(m.pad_mode == "replicate" for m in self._history)
        self._cache_keyword = cache_keyword(self._transformer.layers[0].forward)
        self.rows: list[object] = []
        self._fresh: list[bool] = []  # per slot: no frame decoded yet
        self._failed: set[object] = set()

    def _allocate(self, layer: nn.Module | None, like: torch.Tensor) -> None:
        """Zeroed history or tail tensors for ``layer`` and the layers inside it."""
        if isinstance(layer, MimiConv1d):
            conv = layer.conv
            context = (conv.kernel_size[0] - 1) * conv.dilation[0]
            self._history[layer] = like.new_zeros(self.max_rows, conv.in_channels, context)
        elif isinstance(layer, MimiConvTranspose1d):
            up = layer.conv
            overlap = up.kernel_size[0] - up.stride[0]
            self._tails[layer] = like.new_zeros(self.max_rows, up.out_channels, overlap)
        elif isinstance(layer, MimiResnetBlock):
            for sub in [*layer.block, layer.shortcut]:
                self._allocate(sub, like)

    def _steps_per_frame(self) -> int:
        return 1 if self._upsample is None else int(self._upsample.conv.stride[0])

    def _state(self) -> list[torch.Tensor]:
        cache = self._cache
        return [
            *self._history.values(),
            *self._tails.values(),
            *cache.keys,
            *cache.values,
            cache.positions,
            self._next_step,
        ]

    # ------------------------------------------------------------------ membership

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def admit(self, key: object) -> None:
        """Add a row in the next free slot, with the state of a fresh ``StreamingDecoder``.

        Raises:
            ValueError: No free slot, or ``key`` is already a row.
        """
        if key in self.rows:
            raise ValueError("this row is already in the decoder")
        if len(self.rows) >= self.max_rows:
            raise ValueError("the decoder is full")
        slot = len(self.rows)
        for tensor in self._state():
            tensor[slot] = 0
        self._cache.positions[slot] = -1
        self.rows.append(key)
        self._fresh.append(True)

    def remove(self, key: object) -> None:
        """Drop a row (done, cancelled or failed); the last row moves into its slot."""
        self._failed.discard(key)
        if key not in self.rows:
            return
        index, last = self.rows.index(key), len(self.rows) - 1
        if index != last:
            for tensor in self._state():
                tensor[index] = tensor[last]
            self.rows[index] = self.rows[last]
            self._fresh[index] = self._fresh[last]
        self.rows.pop()
        self._fresh.pop()

    def _swap(self, a: int, b: int) -> None:
        for tensor in self._state():
            tensor[[a, b]] = tensor[[b, a]]
        self.rows[a], self.rows[b] = self.rows[b], self.rows[a]
        self._fresh[a], self._fresh[b] = self._fresh[b], self._fresh[a]

    def _pack_first(self, keys: Mapping[object, Any]) -> None:
        """Move the rows in ``keys`` to slots ``0..len(keys)-1`` (the others after them)."""
        i, j = 0, len(self.rows) - 1
        while True:
            while i < j and self.rows[i] in keys:
                i += 1
            while i < j and self.rows[j] not in keys:
                j -= 1
            if i >= j:
                return
            self._swap(i, j)
            i, j = i + 1, j - 1

    # ------------------------------------------------------------------ decoding

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        """One row's codes as int64 ``(k >= 1, num_codebooks)``; EngineError (``invalid_input``)
        for a wrong shape, dtype or code range."""
        return check_codes(
            codes, num_codebooks=self.num_codebooks, codebook_size=self.codebook_size
        )

    def decode(self, codes: Mapping[object, np.ndarray]) -> dict[object, np.ndarray]:
        """Decode ``k >= 1`` new frames ``(k, num_codebooks)`` for each row in ``codes``.

        Every row gets the same number of frames; rows not in ``codes`` keep their state.

        Returns:
            Per row, ``k * frame_samples`` float32 samples, the continuation of its audio.

        Raises:
            EngineError: A row's codes have a wrong shape, dtype or range, or rows disagree on
                ``k`` (code ``invalid_input``; nothing changed), or decoding failed (the rows of
                the call are then refused until removed).
            ValueError: A key is not a row of this decoder.
        """
        if not codes:
            return {}
        unknown = [key for key in codes if key not in self.rows]
        if unknown:
            raise ValueError(f"{len(unknown)} of these rows are not in the decoder")
        failed = [key for key in codes if key in self._failed]
        if failed:
            raise EngineError("decoding failed earlier for a row of this call; remove it")
        arrays = {key: self.check_codes(value) for key, value in codes.items()}
        frames = {arr.shape[0] for arr in arrays.values()}
        if len(frames) != 1:
            raise bad_input(f"every row must bring the same number of frames, got {sorted(frames)}")
        self._pack_first(arrays)
        n = len(arrays)
        order = self.rows[:n]
        stacked = np.stack([arrays[key] for key in order])  # (n, k, n_q)
        pieces = []
        try:
            for start in range(0, stacked.shape[1], self._max_chunk):
                pieces.append(self._decode(stacked[:, start : start + self._max_chunk]))
        except Exception as exc:
            self._failed.update(order)
            raise EngineError(
                f"streaming audio decoding failed: {type(exc).__name__}: {exc}"
            ) from exc
        audio = np.concatenate(pieces, axis=1) if len(pieces) > 1 else pieces[0]
        expected = stacked.shape[1] * self.frame_samples
        if audio.shape[1] != expected:  # a codec whose frame rate disagrees with its layers
            self._failed.update(order)
            raise EngineError(f"decoded {audio.shape[1]} samples, expected {expected}")
        return {key: audio[i] for i, key in enumerate(order)}

    def _decode(self, stacked: np.ndarray) -> np.ndarray:
        """Rows ``0..n-1`` decode ``stacked`` ``(n, k, n_q)``; returns ``(n, samples)`` float32."""
        codec = self._codec
        n = stacked.shape[0]
        # NNPACK (which PyTorch picks for CPU convolutions from 16 rows on) was ~8x slower than
        # its default convolution on the tiny codec, and its sums depend on the batch: off here.
        with torch.inference_mode(), torch.backends.nnpack.flags(enabled=False):
            ids = torch.from_numpy(stacked).to(codec.device).transpose(1, 2)  # (n, n_q, k)
            fresh = None
            if self._replicate and any(self._fresh[:n]):
                fresh = torch.tensor(self._fresh[:n], device=codec.device)
            hidden = codec.quantizer.decode(ids)
            if self._upsample is not None:
                hidden = self._conv_transpose(self._upsample, hidden)
            hidden = self._transformer_step(hidden)
            for layer in self._seanet.layers:
                hidden = self._layer(layer, hidden, fresh)
            audio = hidden[:, 0].float().cpu().numpy()
        self._fresh[:n] = [False] * n
        return np.ascontiguousarray(audio, dtype=np.float32)

    def _transformer_step(self, hidden: torch.Tensor) -> torch.Tensor:
        """The decoder transformer on new latent steps ``(n, C, steps)``, each row at its own
        position, attending to its own last ``sliding_window`` steps."""
        n, steps = hidden.shape[0], hidden.shape[-1]
        device = hidden.device
        positions = self._next_step[:n, None] + torch.arange(steps, device=device)  # (n, steps)
        cache = self._cache
        cache.set_write(positions)
        held = cache.positions[:n, None, :]  # (n, 1, entries)
        query = positions[:, :, None]  # (n, steps, 1)
        allowed = (held >= 0) & (held <= query) & (held > query - self._window)
        mask: torch.Tensor = allowed[:, None]  # (n, 1, steps, entries)
        x = hidden.transpose(1, 2)
        if not self._bool_mask:  # eager attention adds its mask
            blocked = torch.finfo(x.dtype).min
            mask = torch.zeros(mask.shape, dtype=x.dtype, device=device).masked_fill(~mask, blocked)
        rope = self._transformer.rotary_emb(x, positions)
        extra = {self._cache_keyword: cache}
        for layer in self._transformer.layers:
            x = layer(x, attention_mask=mask, position_embeddings=rope, **extra)
            if isinstance(x, tuple):  # transformers 5.17 (the GPU machines) returns a tuple
                x = x[0]
        self._next_step[:n] += steps
        return x.transpose(1, 2)

    def _layer(
        self, layer: nn.Module, hidden: torch.Tensor, fresh: torch.Tensor | None
    ) -> torch.Tensor:
        """Apply one SEANet decoder layer (as its ``forward`` would) with the rows' state."""
        if isinstance(layer, MimiConv1d):
            return self._conv(layer, hidden, fresh)
        if isinstance(layer, MimiConvTranspose1d):
            return self._conv_transpose(layer, hidden)
        if isinstance(layer, MimiResnetBlock):
            out = hidden
            for sub in layer.block:
                out = self._layer(sub, out, fresh)
            return self._layer(layer.shortcut, hidden, fresh) + out
        return layer(hidden)  # ELU or Identity: pointwise, no state

    def _conv(
        self, layer: MimiConv1d, hidden: torch.Tensor, fresh: torch.Tensor | None
    ) -> torch.Tensor:
        """Causal conv: prepend each row's kept left context instead of the one-shot padding."""
        history = self._history[layer]
        context = history.shape[-1]
        if context == 0:
            return layer.conv(hidden)
        n = hidden.shape[0]
        if fresh is not None and layer.pad_mode == "replicate":
            first = hidden[:, :, :1].expand(-1, -1, context)
            history[:n] = torch.where(fresh[:, None, None], first, history[:n])
        padded = torch.cat([history[:n], hidden], dim=-1)
        history[:n] = padded[..., padded.shape[-1] - context :]
        return layer.conv(padded)

    def _conv_transpose(self, layer: MimiConvTranspose1d, hidden: torch.Tensor) -> torch.Tensor:
        """Causal transposed conv by overlap-add; the bias is added once, to emitted samples."""
        conv = layer.conv
        stride = conv.stride[0]
        full = F.conv_transpose1d(hidden, conv.weight, None, stride=stride, groups=conv.groups)
        tail = self._tails[layer]
        n, overlap = hidden.shape[0], tail.shape[-1]
        full[..., :overlap] += tail[:n]
        emitted = hidden.shape[-1] * stride
        tail[:n] = full[..., emitted:]
        out = full[..., :emitted]
        if conv.bias is not None:
            out = out + conv.bias[:, None]
        return out
