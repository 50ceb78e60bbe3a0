"""Build CSM prompts from cached Mimi codes, the way the model merges raw audio internally.

csm-1b's chat template renders each message as
``<|begin_of_text|>[speaker]text<|end_of_text|>`` followed, for a message with audio, by
``<|AUDIO|>`` repeated once per Mimi frame and one ``<|audio_eos|>``. On its raw-audio path the
model embeds that sequence with its text embeddings, then overwrites the ``<|AUDIO|>`` positions
with the summed codebook embeddings of the encoded frames and the ``<|audio_eos|>`` positions with
the embedding of an all-end frame. ``PromptBuilder`` does the same from codes that are already
known, so context audio is never encoded twice.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch
from transformers import CsmForConditionalGeneration, PreTrainedTokenizerBase

from worker.engine.hf import config_int
from worker.engine.types import ContextTurn, bad_input


class PromptBuilder:
    """Token layout and ``inputs_embeds`` of a CSM prompt built from text and cached codes."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: CsmForConditionalGeneration,
        *,
        codebook_size: int,
    ) -> None:
        """Take the ids the prompt needs from ``tokenizer`` and ``model.config``.

        Args:
            tokenizer: The checkpoint's text tokenizer (the processor's).
            model: The loaded CSM model.
            codebook_size: Mimi's codebook size; valid codes are ``0 .. codebook_size - 1``.
        """
        config = model.config
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no bos or eos token")
        self._tokenizer = tokenizer
        self._tokenizer_lock = threading.Lock()
        self._model = model
        self.bos_id: int = int(tokenizer.bos_token_id)
        self.eos_id: int = int(tokenizer.eos_token_id)
        self.audio_id = config_int(config.audio_token_id, "audio_token_id")
        self.audio_eos_id = config_int(config.audio_eos_token_id, "audio_eos_token_id")
        self.num_codebooks = config_int(config.num_codebooks, "num_codebooks")
        self.codebook_eos_id = config_int(config.codebook_eos_token_id, "codebook_eos_token_id")
        self.codebook_size = codebook_size

    def render(self, speaker: int, text: str, *, audio: bool) -> str:
        """The chat template's rendering of one message (with one ``<|AUDIO|>`` if ``audio``)."""
        tok = self._tokenizer
        suffix = "<|AUDIO|><|audio_eos|>" if audio else ""
        return f"{tok.bos_token}[{speaker}]{text}{tok.eos_token}{suffix}"

    def text_ids(self, speaker: int, text: str) -> list[int]:
        """Token ids of ``<|begin_of_text|>[speaker]text<|end_of_text|>``.

        The text is tokenized as plain text: a control token written inside it (``<|AUDIO|>``,
        ...) becomes ordinary characters, so user text can never forge audio positions.
        """
        if not isinstance(speaker, int) or isinstance(speaker, bool) or speaker < 0:
            raise bad_input(f"speaker must be a non-negative integer, got {speaker!r}")
        if not isinstance(text, str):
            raise bad_input("text must be a string")
        with self._tokenizer_lock:  # a fast tokenizer may not be entered by two threads at once
            body = self._tokenizer.encode(
                f"[{speaker}]{text}", add_special_tokens=False, split_special_tokens=True
            )
        return [self.bos_id, *body, self.eos_id]

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        """Validate a ``(frames, num_codebooks)`` code array; return it as int64."""
        arr = np.asarray(codes)
        if arr.ndim != 2 or arr.shape[1] != self.num_codebooks:
            raise bad_input(
                f"codes must have shape (frames, {self.num_codebooks}), got {tuple(arr.shape)}"
            )
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise bad_input(f"codes must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (arr.min() < 0 or arr.max() >= self.codebook_size):
            raise bad_input(f"codes must lie in [0, {self.codebook_size})")
        return arr

    def turn_cost(self, turn: ContextTurn) -> int:
        """Prompt positions a context turn occupies: its text, one per frame, one audio end."""
        frames = self.check_codes(turn.codes).shape[0]
        return len(self.text_ids(turn.speaker, turn.text)) + frames + 1

    def request_cost(self, speaker: int, text: str) -> int:
        """Prompt positions of the new turn's text part."""
        return len(self.text_ids(speaker, text))

    def token_ids(
        self, context: Sequence[ContextTurn], speaker: int, text: str
    ) -> tuple[list[int], np.ndarray]:
        """The prompt's token ids (``<|AUDIO|>`` once per frame) and all context codes, in order.

        Returns:
            ``(ids, codes)`` with ``codes`` of shape ``(total_frames, num_codebooks)``.
        """
        ids: list[int] = []
        blocks: list[np.ndarray] = []
        for turn in context:
            codes = self.check_codes(turn.codes)
            ids += self.text_ids(turn.speaker, turn.text)
            ids += [self.audio_id] * codes.shape[0] + [self.audio_eos_id]
            blocks.append(codes)
        ids += self.text_ids(speaker, text)
        all_codes = (
            np.concatenate(blocks, axis=0)
            if blocks
            else np.zeros((0, self.num_codebooks), dtype=np.int64)
        )
        return ids, all_codes

    @torch.no_grad()
    def embed(
        self, context: Sequence[ContextTurn], speaker: int, text: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs_embeds`` ``(1, L, hidden)`` and ``attention_mask`` ``(1, L)`` of the prompt.

        Mirrors ``CsmForConditionalGeneration._merge_input_ids_with_input_values``: text
        embeddings everywhere, the backbone's summed codebook embeddings at the audio positions,
        the embedding of an all-end frame at the audio-end positions.
        """
        return self.embed_ids(*self.token_ids(context, speaker, text))

    @torch.no_grad()
    def embed_ids(self, ids: list[int], codes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """``embed`` for the output of :meth:`token_ids`."""
        model = self._model
        device = model.device
        input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        inputs_embeds = model.embed_text_tokens(input_ids)

        audio_mask = input_ids == self.audio_id
        if codes.shape[0]:
            code_ids = torch.from_numpy(codes).to(device)[None]  # (1, frames, n_q)
            audio_embeds = model.backbone_model.embed_tokens(code_ids)  # (1, frames, hidden)
            inputs_embeds[audio_mask] = audio_embeds[0]

        audio_eos_mask = input_ids == self.audio_eos_id
        n_ends = int(audio_eos_mask.sum())
        if n_ends:
            end_frame = torch.full(
                (1, 1, self.num_codebooks), self.codebook_eos_id, dtype=torch.long, device=device
            )
            end_embeds = model.backbone_model.embed_tokens(end_frame).squeeze(1)  # (1, hidden)
            inputs_embeds[audio_eos_mask] = end_embeds.repeat(n_ends, 1)

        attention_mask = torch.ones_like(input_ids)
        return inputs_embeds, attention_mask
