"""The frame loop's KV cache: one slot per batch row, written in place, allocated once."""

from __future__ import annotations

from typing import Any

import torch


class SlotCache:
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
