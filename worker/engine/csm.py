"""The CSM speech engine: Sesame's Conversational Speech Model through transformers.

``CsmEngine`` loads a checkpoint (``sesame/csm-1b``, a fine-tune, or the tiny test model from
``worker.engine.tiny``), encodes audio to Mimi codes, decodes codes to audio, and generates a new
turn's codes from a conversation whose earlier turns are given as cached codes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import AutoProcessor, CsmForConditionalGeneration, CsmProcessor

from shared.devices import check_device
from shared.errors import EngineError, ModelLoadError
from worker.engine.batcher import Batcher
from worker.engine.codec_stream import StreamingDecoder
from worker.engine.frame_loop import FrameLoop
from worker.engine.generation import FrameStreamer, GenerationCancelled, generate_kwargs
from worker.engine.hf import config_int, quiet_progress_bars
from worker.engine.prompt import PromptBuilder
from worker.engine.step_graphs import CompileMode, resolve_compile_mode
from worker.engine.tiny import TINY_MARKER
from worker.engine.types import ContextTurn, OnFrame, SamplingParams, bad_input

__all__ = ["ContextTurn", "CsmEngine", "OnFrame", "SamplingParams"]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _resolve_device(device: str) -> str:
    """``cpu`` or ``cuda:K``; raises DeviceUnavailable for a GPU this process does not see."""
    # device_count() asks NVML where it can and does not create a CUDA context.
    return check_device(device, cuda_count=torch.cuda.device_count())


class CsmEngine:
    """One loaded CSM model with its processor.

    Calls may come from different threads but are serialised by an internal lock.

    Attributes:
        model_name: What was asked for (hub id or folder).
        is_test_model: True for the tiny random checkpoint (its marker file is present).
        sample_rate: Audio sample rate in Hz (24000).
        frame_samples: Audio samples per Mimi frame (1920, i.e. 12.5 frames per second).
        num_codebooks: Codes per frame.
        max_positions: The backbone's position budget (prompt plus generated frames).
        device: ``"cpu"`` or ``"cuda:K"``.
    """

    sample_rate: int = 24000
    frame_samples: int = 1920

    def __init__(
        self,
        *,
        model_name: str,
        model: CsmForConditionalGeneration,
        processor: CsmProcessor,
        device: str,
        is_test_model: bool,
        max_batch: int = 8,
        compile: CompileMode = "off",
    ) -> None:
        """Wrap an already loaded model; use :meth:`load` instead."""
        config = model.config
        codec: Any = config.codec_config
        self.model_name = model_name
        self.is_test_model = is_test_model
        self.device = device
        self.sample_rate = config_int(codec.sampling_rate, "codec sampling_rate")
        self.frame_samples = int(round(codec.sampling_rate / codec.frame_rate))
        self.num_codebooks = config_int(config.num_codebooks, "num_codebooks")
        self.max_positions = config_int(config.max_position_embeddings, "max_position_embeddings")
        self.codebook_size = config_int(codec.codebook_size, "codec codebook_size")
        self._model = model
        self._processor = processor
        self._prompt = PromptBuilder(processor.tokenizer, model, codebook_size=self.codebook_size)
        self._lock = threading.Lock()  # the reference path mutates generation configs
        self._loop = FrameLoop(model, max_batch=max_batch, compile=compile)
        self._batcher = Batcher(self._loop, model.codec_model)

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "auto",
        offline: bool = False,
        max_batch: int = 8,
        compile: str = "auto",
    ) -> CsmEngine:
        """Load model and processor: bfloat16 on CUDA, float32 on CPU, in eval mode.

        Args:
            model: A hub id (``sesame/csm-1b``) or a local checkpoint folder.
            device: ``"auto"`` (the first GPU when there is one), ``"cpu"``, ``"cuda"`` (the
                first GPU) or ``"cuda:K"``.
            offline: Take a hub id from the local Hugging Face cache only (fails at once when
                it is not there, instead of retrying an unreachable hub for minutes).
            max_batch: How many turns the frame loop runs together.
            compile: How the frame loop's fixed-shape steps run: ``auto`` (CUDA graphs on
                CUDA, eager on CPU), ``off``, ``inductor``, ``graphs`` or ``inductor+graphs``
                (see ``worker.engine.step_graphs``). :meth:`warm_up` prepares them.

        Raises:
            DeviceUnavailable: ``device`` names no device this process sees.
            ModelLoadError: The model or processor could not be loaded or is not a usable CSM.
        """
        local = Path(model).expanduser()
        is_path = model.startswith(("/", ".", "~")) or local.exists()
        if is_path and not local.is_dir():
            raise ModelLoadError(f"could not load CSM model {model!r}: no such folder")
        if is_path and not (local / "config.json").is_file():
            # (from_pretrained would build a default csm-1b config and fail later, less clearly)
            raise ModelLoadError(
                f"could not load CSM model {model!r}: no config.json in the folder"
            )
        resolved = _resolve_device(device)  # before the try: a setting to fix, not a model error
        try:
            mode = resolve_compile_mode(compile, torch.device(resolved))
            dtype = torch.bfloat16 if resolved.startswith("cuda") else torch.float32
            source = str(local) if is_path else model
            with quiet_progress_bars():
                net = CsmForConditionalGeneration.from_pretrained(
                    source, dtype=dtype, local_files_only=is_path or offline
                )
                processor = AutoProcessor.from_pretrained(
                    source, local_files_only=is_path or offline
                )
            if not isinstance(processor, CsmProcessor):
                raise TypeError(f"expected a CsmProcessor, got {type(processor).__name__}")
            if resolved.startswith("cuda"):
                # This thread's current device, so that nothing here opens a context on GPU 0
                # (other threads' ops follow their tensors' device).
                torch.cuda.set_device(torch.device(resolved))
            net.to(resolved)
            net.eval()
            if resolved == "cpu":
                # oneDNN primitive creation makes the first Mimi decode of each new length take
                # 0.2-2 s on CPU; without it a decode takes tens of milliseconds.
                torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
            engine = cls(
                model_name=model,
                model=net,
                processor=processor,
                device=resolved,
                is_test_model=is_path and (local / TINY_MARKER).is_file(),
                max_batch=max_batch,
                compile=mode,
            )
            engine._check_prompt_format()
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"could not load CSM model {model!r}: {_one_line(exc)}") from exc
        return engine

    def _check_prompt_format(self) -> None:
        """Fail at load when the checkpoint's chat template differs from the layout we build."""
        processor = self._processor
        if processor.audio_token_id != self._prompt.audio_id:
            raise ModelLoadError(
                f"CSM model {self.model_name!r}: processor audio token id "
                f"{processor.audio_token_id} != model's {self._prompt.audio_id}"
            )
        if not processor.chat_template:
            return
        audio_item = {"type": "audio", "path": ""}  # not loaded: tokenize=False only renders
        probe = [
            {"role": "0", "content": [{"type": "text", "text": "a"}, audio_item]},
            {"role": "1", "content": [{"type": "text", "text": "b"}]},
        ]
        rendered = processor.apply_chat_template(cast(Any, probe), tokenize=False)
        render = self._prompt.render
        expected = render(0, "a", audio=True) + render(1, "b", audio=False)
        if rendered != expected:
            raise ModelLoadError(
                f"CSM model {self.model_name!r}: unsupported chat template "
                f"(renders {rendered!r}, expected {expected!r})"
            )

    @property
    def compile_mode(self) -> CompileMode:
        """How the frame loop's fixed-shape steps run (``off`` is eager)."""
        return self._loop.compile_mode

    def warm_up(self) -> None:
        """Compile or capture the frame loop's steps for every batch bucket (when compiling),
        then run one tiny generate, decode and encode, so the first real turn is not slow."""
        self._loop.warm_up()
        codes = self.generate([], 0, "Hello.", SamplingParams(temperature=0, max_frames=2))
        self.decode(codes)
        self.encode(np.zeros(self.frame_samples, dtype=np.float32))

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """Encode float mono 24 kHz samples to Mimi codes ``(frames, num_codebooks)`` int64.

        These are exactly the codes the model computes for that audio on its raw-audio path
        (the processor's float32 samples, one codec call per audio segment).

        Raises:
            EngineError: Not a non-empty 1-D array of finite floats (code ``invalid_input``),
                or the codec failed.
        """
        arr = np.asarray(audio)
        if arr.ndim != 1 or arr.size == 0:
            raise bad_input(f"audio must be non-empty 1-D samples, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise bad_input(f"audio samples must be floats, got dtype {arr.dtype}")
        samples = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(samples).all():
            raise bad_input("audio contains NaN or infinite samples")
        codec = self._model.codec_model
        with self._lock:
            try:
                values = torch.from_numpy(samples).to(device=codec.device, dtype=codec.dtype)
                with torch.no_grad():
                    codes = codec.encode(values[None, None]).audio_codes  # (1, n_q, frames)
                return codes[0].transpose(0, 1).cpu().numpy().astype(np.int64)
            except Exception as exc:
                raise EngineError(f"audio encoding failed: {_one_line(exc)}") from exc

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Decode Mimi codes ``(frames, num_codebooks)`` to float32 mono 24 kHz samples.

        Returns:
            ``frames * frame_samples`` samples.

        Raises:
            EngineError: Wrong shape, dtype or code range (code ``invalid_input``), or the
                codec failed.
        """
        arr = self._prompt.check_codes(codes)
        if arr.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        codec = self._model.codec_model
        with self._lock:
            try:
                ids = torch.from_numpy(arr).to(codec.device).transpose(0, 1)[None]
                with torch.no_grad():
                    audio = codec.decode(ids).audio_values[0, 0]
                out = audio.float().cpu().numpy()
            except Exception as exc:
                raise EngineError(f"audio decoding failed: {_one_line(exc)}") from exc
        expected = arr.shape[0] * self.frame_samples
        if out.shape[0] != expected:
            raise EngineError(f"codec returned {out.shape[0]} samples, expected {expected}")
        return np.ascontiguousarray(out, dtype=np.float32)

    def stream_decoder(self) -> StreamingDecoder:
        """A fresh streaming decoder: feed it a turn's frames as they come, each decoded once."""
        return StreamingDecoder(self._model.codec_model)

    def turn_cost(self, turn: ContextTurn) -> int:
        """Prompt positions a context turn occupies (text tokens + frames + audio end)."""
        return self._prompt.turn_cost(turn)

    def request_cost(self, speaker: int, text: str) -> int:
        """Prompt positions of the new turn's text part."""
        return self._prompt.request_cost(speaker, text)

    def generate(
        self,
        context: Sequence[ContextTurn],
        speaker: int,
        text: str,
        params: SamplingParams,
        *,
        on_frame: OnFrame | None = None,
    ) -> np.ndarray:
        """Generate the codes of ``speaker`` saying ``text`` after ``context``.

        The prompt is built from the context's cached codes (audio is never re-encoded) and is
        equivalent to transformers' raw-audio path. The turn runs in the engine's frame loop,
        batched with whatever other turns are running (its codes do not depend on them).
        Generation ends at the end frame, after ``params.max_frames`` frames, or when
        ``on_frame`` returns True. Each frame is decoded once, in the frame loop's thread, in one
        batched streaming pass with the other turns' frames (the samples equal a per-turn
        ``StreamingDecoder``'s to float32 round-off). Safe to call from many threads at once.

        Args:
            context: Earlier turns, oldest first.
            speaker: Speaker id of the new turn.
            text: Text of the new turn.
            params: Sampling settings (temperature 0 = greedy; ``seed`` for reproducibility).
            on_frame: Called in the caller's thread as ``on_frame(frame, audio)`` with each new
                frame's codes ``(num_codebooks,)`` int64 (never the end frame) and its
                ``frame_samples`` float32 samples, the continuation of the turn's audio;
                return True to stop early. An exception it raises propagates unchanged.

        Returns:
            Codes ``(frames, num_codebooks)`` int64, without the end frame.

        Raises:
            EngineError: Generation failed; code ``invalid_input`` for bad parameters, codes
                or speaker, ``prompt_too_long`` when prompt plus ``max_frames`` exceeds
                ``max_positions``.
        """
        self._check_params(params)
        ids, context_codes = self._prompt.token_ids(context, speaker, text)  # validates
        self._check_budget(len(ids), params.max_frames)
        try:
            inputs_embeds, _ = self._prompt.embed_ids(ids, context_codes)
        except Exception as exc:
            raise EngineError(f"generation failed: {_one_line(exc)}") from exc
        handle = self._batcher.submit(inputs_embeds, params)
        frames: list[np.ndarray] = []
        try:
            for frame, audio in handle:
                frames.append(frame)
                if on_frame is not None and on_frame(frame, audio):
                    break
        finally:
            handle.cancel()  # a no-op once the turn is done; frees the slot otherwise
        if not frames:
            return np.zeros((0, self.num_codebooks), dtype=np.int64)
        return np.stack(frames)

    @property
    def batcher(self) -> Batcher:
        """The frame loop's batcher (occupancy for metrics and benchmarks)."""
        return self._batcher

    def _check_budget(self, prompt_positions: int, max_frames: int) -> None:
        if prompt_positions + max_frames > self.max_positions:
            raise bad_input(
                f"prompt of {prompt_positions} positions plus {max_frames} frames exceeds "
                f"the model's {self.max_positions} positions",
                code="prompt_too_long",
            )

    def generate_reference(
        self,
        context: Sequence[ContextTurn],
        speaker: int,
        text: str,
        params: SamplingParams,
        *,
        on_frame: OnFrame | None = None,
    ) -> np.ndarray:
        """:meth:`generate` through transformers' own ``generate``, one turn at a time.

        The reference the frame loop is checked against: the same prompt and arguments, the
        same codes when greedy. Sampling draws differ (``generate`` uses the global torch RNG,
        seeded with ``params.seed``). ``on_frame`` is called in this thread, with each frame's
        audio from a per-turn ``StreamingDecoder``.
        """
        self._check_params(params)
        with self._lock:
            ids, context_codes = self._prompt.token_ids(context, speaker, text)  # validates
            self._check_budget(len(ids), params.max_frames)
            eos = self._prompt.codebook_eos_id
            streamer = FrameStreamer(self.num_codebooks, eos, self._with_audio(on_frame))
            try:
                inputs_embeds, attention_mask = self._prompt.embed_ids(ids, context_codes)
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                out = self._model.generate(
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    streamer=streamer,
                    output_audio=False,
                    **generate_kwargs(params),
                )
            except GenerationCancelled:
                if streamer.callback_error is not None:
                    raise streamer.callback_error from None
                return self._frames_to_numpy(streamer.frames)
            except Exception as exc:
                raise EngineError(f"generation failed: {_one_line(exc)}") from exc
            codes = out[0]  # (frames, n_q)
            if codes.shape[0] and streamer.ended:
                codes = codes[:-1]
            return codes.cpu().numpy().astype(np.int64)

    def _with_audio(self, on_frame: OnFrame | None) -> Callable[[np.ndarray], bool] | None:
        """``on_frame`` fed each frame's audio from a fresh per-turn streaming decoder."""
        if on_frame is None:
            return None
        decoder = self.stream_decoder()
        return lambda frame: on_frame(frame, decoder.push(frame[None]))

    def _frames_to_numpy(self, frames: list[torch.Tensor]) -> np.ndarray:
        if not frames:
            return np.zeros((0, self.num_codebooks), dtype=np.int64)
        return torch.stack(frames).cpu().numpy().astype(np.int64)

    @staticmethod
    def _check_params(params: SamplingParams) -> None:
        if not params.temperature >= 0:  # also rejects NaN
            raise bad_input(f"temperature must be >= 0, got {params.temperature}")
        if params.top_k < 0:
            raise bad_input(f"top_k must be >= 0, got {params.top_k}")
        if params.max_frames < 1:
            raise bad_input(f"max_frames must be >= 1, got {params.max_frames}")
