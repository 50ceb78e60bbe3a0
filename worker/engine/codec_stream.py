"""Frame-by-frame Mimi decoding, for streaming audio while a turn is generated.

transformers' ``MimiModel.decode`` is not streaming: its SEANet decoder pads every causal
convolution afresh at the start of each call and keeps no overlap of its transposed
convolutions. ``StreamingDecoder`` re-runs the same decode path with the codec's own modules and
weights, one chunk of frames at a time, and carries between calls exactly the state that a
one-shot decode of the whole clip would have seen:

1. ``quantizer.decode``: frame-wise, no state.
2. ``upsample`` (causal transposed convolution, 12.5 -> 25 Hz): the overlap tail.
3. ``decoder_transformer``: its KV cache (a sliding-window cache when the config has a window)
   and the position of the next latent step.
4. SEANet decoder: for each causal ``MimiConv1d`` its last ``(kernel - 1) * dilation`` input
   samples; for each causal ``MimiConvTranspose1d`` its overlap tail.

Why this is exact: every layer is causal with no lookahead. A causal ``MimiConv1d`` left-pads by
``(kernel - 1) * dilation`` (stride 1 in the decoder, so no right padding), so output ``n``
reads inputs ``n - pad .. n`` only. A causal ``MimiConvTranspose1d`` with ``trim_right_ratio``
1 trims ``kernel - stride`` samples on the right only, so output ``n`` sums inputs
``i <= n // stride``. The transformer's mask is causal; with a sliding window of ``w`` steps
a step sees the ``w - 1`` before it, which is all the sliding KV cache keeps. Hence after
frame ``t`` all samples below ``(t + 1) * frame_samples`` are final, and computing them chunk by
chunk performs the same sums as the one-shot decode, up to floating-point summation order.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.models.mimi.modeling_mimi import (
    MimiConv1d,
    MimiConvTranspose1d,
    MimiResnetBlock,
)

from shared.errors import EngineError
from worker.engine.hf import cache_keyword
from worker.engine.types import bad_input

__all__ = ["StreamingDecoder", "check_codes", "streamable_parts"]

_PAD_MODES = ("constant", "replicate")  # "reflect" would read samples from the future


def _decoder_parts(codec: Any) -> tuple[MimiConvTranspose1d | None, Any, Any]:
    """``(upsample, decoder_transformer, seanet_decoder)`` of a ``MimiModel``.

    transformers 5.23 (installed here) groups them in ``codec.decoder``, a ``MimiDecoderModel``,
    and only keeps deprecated aliases on the codec; older releases (the 4.x line at least) have
    them on the codec itself, with ``codec.decoder`` the SEANet decoder.
    """
    decoder = codec.decoder
    if decoder is None:
        raise EngineError("this Mimi model has no decoder")
    if hasattr(decoder, "decoder_seanet"):
        return decoder.upsample, decoder.decoder_transformer, decoder.decoder_seanet
    return getattr(codec, "upsample", None), codec.decoder_transformer, decoder


def _check_conv(layer: MimiConv1d) -> None:
    conv = layer.conv
    if not layer.causal or layer.pad_mode not in _PAD_MODES:
        raise EngineError(
            f"streaming needs causal convolutions padded with one of {_PAD_MODES}, "
            f"got causal={layer.causal}, pad_mode={layer.pad_mode!r}"
        )
    if conv.stride[0] != 1 or conv.padding[0] != 0 or conv.padding_mode != "zeros":
        raise EngineError("streaming supports only stride-1, unpadded Conv1d in the decoder")


def _check_conv_transpose(layer: MimiConvTranspose1d) -> None:
    conv = layer.conv
    if not layer.causal or layer.padding_left != 0:
        raise EngineError(
            "streaming needs causal transposed convolutions trimmed on the right only "
            f"(trim_right_ratio 1.0), got causal={layer.causal}, "
            f"trim_right_ratio={layer.trim_right_ratio}"
        )
    if conv.padding[0] != 0 or conv.output_padding[0] != 0 or conv.dilation[0] != 1:
        raise EngineError("streaming supports only unpadded, undilated ConvTranspose1d")


def _check_layer(layer: nn.Module) -> None:
    """Refuse any layer this module does not know how to stream (rather than be silently wrong)."""
    if isinstance(layer, MimiConv1d):
        _check_conv(layer)
    elif isinstance(layer, MimiConvTranspose1d):
        _check_conv_transpose(layer)
    elif isinstance(layer, MimiResnetBlock):
        for sub in [*layer.block, layer.shortcut]:
            _check_layer(sub)
    elif not isinstance(layer, nn.ELU | nn.Identity):
        raise EngineError(f"streaming does not support decoder layer {type(layer).__name__}")


def streamable_parts(codec_model: Any) -> tuple[MimiConvTranspose1d | None, Any, Any]:
    """``(upsample, decoder_transformer, seanet_decoder)`` of a codec whose decoder can stream.

    Raises:
        EngineError: The codec's decoder is not causal, pads with a mode other than
            "constant" or "replicate", or has a layer that cannot be streamed.
    """
    upsample, transformer, seanet = _decoder_parts(codec_model)
    for layer in [upsample, *seanet.layers]:
        if layer is not None:
            _check_layer(layer)
    return upsample, transformer, seanet


def check_codes(codes: np.ndarray, *, num_codebooks: int, codebook_size: int) -> np.ndarray:
    """``codes`` as int64 ``(k >= 1, num_codebooks)`` in ``[0, codebook_size)``.

    Raises:
        EngineError: Wrong shape, dtype or code range (code ``invalid_input``).
    """
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != num_codebooks:
        raise bad_input(f"codes must have shape (k >= 1, {num_codebooks}), got {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise bad_input(f"codes must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0 or arr.max() >= codebook_size:
        raise bad_input(f"codes must lie in [0, {codebook_size})")
    return arr


class StreamingDecoder:
    """Decode Mimi codes incrementally: each frame is decoded once, with state kept.

    The concatenated output of :meth:`push` equals ``codec.decode`` of all codes pushed so far,
    up to floating-point round-off. The codec's modules are only read, never changed: all state
    lives on this instance, so several decoders may share one codec across threads.

    State kept (all tensors on the codec's device, in its dtype):

    - ``_tails``: per causal transposed convolution (``upsample`` and the SEANet upsampling
      layers), the last ``kernel - stride`` output samples of the previous chunk, before bias;
      they still receive contributions from the next input step (overlap-add).
    - ``_history``: per causal ``MimiConv1d``, its last ``(kernel - 1) * dilation`` input
      samples, which a one-shot decode would read as left context; zeros (``pad_mode``
      "constant") or the first sample ("replicate") before the first chunk.
    - ``_cache`` and ``_positions``: the decoder transformer's KV cache and the position of
      the next latent step.

    Attributes:
        frames: Frames pushed so far.
        frame_samples: Output samples per frame (1920 at 24 kHz, 12.5 frames per second).
        num_codebooks: Codes per frame.
        codebook_size: Codes lie in ``[0, codebook_size)``.
    """

    def __init__(self, codec_model: Any) -> None:
        """Prepare an empty decoder for ``codec_model`` (a transformers ``MimiModel``).

        Raises:
            EngineError: The codec's decoder is not causal, pads with a mode other than
                "constant" or "replicate", or has a layer this decoder cannot stream.
        """
        config = codec_model.config
        self._codec = codec_model
        self._upsample, self._transformer, self._seanet = streamable_parts(codec_model)
        self.num_codebooks = int(config.num_quantizers)
        self.codebook_size = int(config.codebook_size)
        self.frame_samples = int(round(config.sampling_rate / config.frame_rate))
        self.frames = 0
        self._tails: dict[nn.Module, torch.Tensor] = {}
        self._history: dict[nn.Module, torch.Tensor] = {}
        self._cache = DynamicCache(config=self._transformer.config)
        self._positions = 0
        self._failed = False
        # older transformers derive the cache position from the cache unless given one
        params = inspect.signature(self._transformer.forward).parameters
        self._pass_cache_position = "cache_position" in params
        self._cache_keyword = cache_keyword(self._transformer.forward)

    def push(self, codes: np.ndarray) -> np.ndarray:
        """Decode ``k >= 1`` new frames of codes, shape ``(k, num_codebooks)`` int64.

        Returns:
            ``k * frame_samples`` float32 mono samples, the continuation of earlier pushes.

        Raises:
            EngineError: Wrong shape, dtype or code range (code ``invalid_input``; the decoder
                is unchanged), or decoding failed (the decoder's state is then incomplete and
                every later push is refused).
        """
        if self._failed:
            raise EngineError("this streaming decoder failed earlier; start a new one")
        arr = self._check_codes(codes)
        try:
            audio = self._decode(arr)
        except Exception as exc:
            self._failed = True
            raise EngineError(
                f"streaming audio decoding failed: {type(exc).__name__}: {exc}"
            ) from exc
        expected = arr.shape[0] * self.frame_samples
        if audio.shape[0] != expected:  # a codec whose frame rate disagrees with its layers
            self._failed = True
            raise EngineError(f"decoded {audio.shape[0]} samples, expected {expected}")
        self.frames += arr.shape[0]
        return audio

    def _decode(self, arr: np.ndarray) -> np.ndarray:
        codec = self._codec
        with torch.inference_mode():
            ids = torch.from_numpy(arr).to(codec.device).transpose(0, 1)[None]  # (1, n_q, k)
            hidden = codec.quantizer.decode(ids)
            if self._upsample is not None:
                hidden = self._conv_transpose(self._upsample, hidden)
            hidden = self._transformer_step(hidden)
            for layer in self._seanet.layers:
                hidden = self._layer(layer, hidden)
            audio = hidden[0, 0].float().cpu().numpy()
        return np.ascontiguousarray(audio, dtype=np.float32)

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        return check_codes(
            codes, num_codebooks=self.num_codebooks, codebook_size=self.codebook_size
        )

    def _transformer_step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Run the decoder transformer on new latent steps ``(1, C, n)`` with the KV cache."""
        steps = hidden.shape[-1]
        positions = torch.arange(self._positions, self._positions + steps, device=hidden.device)
        extra: dict[str, Any] = {self._cache_keyword: self._cache}
        if self._pass_cache_position:
            extra["cache_position"] = positions
        out = self._transformer(
            hidden.transpose(1, 2),
            use_cache=True,
            position_ids=positions[None],
            **extra,
        )
        self._positions += steps
        return out[0].transpose(1, 2)

    def _layer(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Apply one SEANet decoder layer (as its ``forward`` would) with this decoder's state."""
        if isinstance(layer, MimiConv1d):
            return self._conv(layer, hidden)
        if isinstance(layer, MimiConvTranspose1d):
            return self._conv_transpose(layer, hidden)
        if isinstance(layer, MimiResnetBlock):
            out = hidden
            for sub in layer.block:
                out = self._layer(sub, out)
            return self._layer(layer.shortcut, hidden) + out
        return layer(hidden)  # ELU or Identity: pointwise, no state

    def _conv(self, layer: MimiConv1d, hidden: torch.Tensor) -> torch.Tensor:
        """Causal conv: prepend the kept left context instead of the one-shot left padding."""
        conv = layer.conv
        context = (conv.kernel_size[0] - 1) * conv.dilation[0]
        history = self._history.get(layer)
        if history is None:
            shape = (hidden.shape[0], hidden.shape[1], context)
            if layer.pad_mode == "replicate":
                history = hidden[..., :1].expand(shape)
            else:
                history = hidden.new_zeros(shape)
        padded = torch.cat([history, hidden], dim=-1)
        self._history[layer] = padded[..., padded.shape[-1] - context :].clone()
        return conv(padded)

    def _conv_transpose(self, layer: MimiConvTranspose1d, hidden: torch.Tensor) -> torch.Tensor:
        """Causal transposed conv by overlap-add; the bias is added once, to emitted samples."""
        conv = layer.conv
        stride = conv.stride[0]
        full = F.conv_transpose1d(hidden, conv.weight, None, stride=stride, groups=conv.groups)
        tail = self._tails.get(layer)
        if tail is not None:
            full[..., : tail.shape[-1]] += tail
        emitted = hidden.shape[-1] * stride
        self._tails[layer] = full[..., emitted:]
        out = full[..., :emitted]
        if conv.bias is not None:
            out = out + conv.bias[:, None]
        return out
