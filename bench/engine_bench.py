"""Engine benchmarks, in one process, every comparison side by side in one run.

- ms per frame: Parley's frame loop vs transformers' ``generate`` on the same model and prompt
  (greedy, so both make the same frames);
- aggregate frames/s of the frame loop at several batch sizes (sampled turns of different seeds);
- streaming Mimi decode of one new frame for ``rows`` turns: one batched pass
  (``BatchedStreamingDecoder``) vs one ``StreamingDecoder.push`` per turn, interleaved;
- time to first audio for a 100-frame turn through ``CsmEngine.generate`` with the streaming
  decoder, and its fraction of the whole turn;
- on CPU, a frame-loop step plus the batched decode of its frames, run in a thread of its own
  (as the worker's ``Batcher`` runs them) with torch's intra-op threads at 1 and at one per core:
  why ``PARLEY_WORKER_TORCH_THREADS`` defaults to 1.

Models: ``tiny`` (the project's random test checkpoint) or ``csm-1b`` (the full-size csm-1b
architecture, default ``CsmConfig`` shapes, with random weights: same cost per frame as the real
weights; bf16 on CUDA).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import CsmConfig, CsmForConditionalGeneration

from bench import summary
from worker.engine.codec_batch import BatchedStreamingDecoder
from worker.engine.codec_stream import StreamingDecoder
from worker.engine.frame_loop import FrameLoop
from worker.engine.types import SamplingParams

PROMPT_POSITIONS = 200  # a few turns of context: text tokens and audio frames


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_model(arch: str, device: str, tiny_dir: Path) -> CsmForConditionalGeneration:
    """The tiny checkpoint from ``tiny_dir``, or a random full-size csm-1b."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if arch == "tiny":
        model = CsmForConditionalGeneration.from_pretrained(tiny_dir, dtype=dtype)
    elif arch == "csm-1b":
        torch.manual_seed(0)
        config: Any = CsmConfig()
        model = CsmForConditionalGeneration(config)
        model.to(dtype=dtype)  # type: ignore[call-arg]
        # Random weights emit the 3 ids past the codec's codebook; suppress them as the tiny
        # checkpoint does (Mimi could not decode them).
        extra = list(range(config.codec_config.codebook_size, config.vocab_size))
        model.generation_config.suppress_tokens = extra
        model.depth_decoder.generation_config.suppress_tokens = extra
    else:
        raise ValueError(f"unknown arch {arch!r} (tiny or csm-1b)")
    return model.to(device).eval()


@torch.no_grad()
def prompt_embeds(model: CsmForConditionalGeneration, positions: int, seed: int) -> torch.Tensor:
    """A prompt of ``positions``: half text tokens, half audio frames, as the engine builds it."""
    gen = torch.Generator().manual_seed(seed)
    config: Any = model.config
    n_text = positions // 2
    text = torch.randint(0, 256, (1, n_text), generator=gen)
    shape = (1, positions - n_text, config.num_codebooks)
    codes = torch.randint(0, config.codec_config.codebook_size, shape, generator=gen)
    text_embeds = model.embed_text_tokens(text.to(model.device))
    audio_embeds = model.backbone_model.embed_tokens(codes.to(model.device))
    return torch.cat([audio_embeds, text_embeds], dim=1)


def median_ms(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def run_loop(loop: FrameLoop, rows: list[tuple[torch.Tensor, SamplingParams]]) -> int:
    """Admit every row, step until all are done; the number of frames made."""
    for i, (embeds, params) in enumerate(rows):
        loop.admit(i, embeds, params)
    made = 0
    while loop.rows:
        made += sum(r.frame is not None for r in loop.step())
    return made


@torch.no_grad()
def loop_vs_generate(model: CsmForConditionalGeneration, *, frames: int, repeats: int) -> dict:
    """ms per frame, greedy, batch 1: transformers' generate vs the frame loop (same frames)."""
    embeds = prompt_embeds(model, PROMPT_POSITIONS, seed=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=model.device)
    greedy = {"do_sample": False, "temperature": None, "top_k": None}
    kwargs: dict[str, Any] = {**greedy, **{f"depth_decoder_{k}": v for k, v in greedy.items()}}
    loop = FrameLoop(model, max_batch=1)
    params = SamplingParams(temperature=0, top_k=0, max_frames=frames)

    def hf() -> Any:
        return model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=frames, **kwargs
        )

    ref = hf()[0].cpu().numpy()
    got: list[np.ndarray] = []
    loop.admit("check", embeds, params)
    while loop.rows:
        got += [r.frame.numpy() for r in loop.step() if r.frame is not None]
    same = bool(np.array_equal(np.array(got), ref[: len(got)])) and len(got) == len(ref)
    hf_ms = median_ms(hf, repeats, model.device) / frames
    loop_ms = median_ms(lambda: run_loop(loop, [(embeds, params)]), repeats, model.device)
    loop_ms /= frames
    return {
        "frames": frames,
        "prompt_positions": PROMPT_POSITIONS,
        "generate_ms_per_frame": hf_ms,
        "loop_ms_per_frame": loop_ms,
        "loop_over_generate": loop_ms / hf_ms,
        "loop_real_time_factor": loop_ms / 80.0,
        "same_codes": same,
    }


@torch.no_grad()
def batch_throughput(
    model: CsmForConditionalGeneration, *, sizes: list[int], frames: int, repeats: int
) -> dict:
    """Aggregate frames/s of the loop with ``b`` sampled turns running together."""
    loop = FrameLoop(model, max_batch=max(sizes))
    out: dict[str, Any] = {"frames_per_turn": frames, "sizes": {}}
    base = None
    for b in sizes:
        rows = [
            (
                prompt_embeds(model, PROMPT_POSITIONS - 7 * i, seed=i),
                SamplingParams(0.9, 50, frames, i),
            )
            for i in range(b)
        ]
        ms = median_ms(partial(run_loop, loop, rows), repeats, model.device)
        fps = b * frames / (ms / 1000)
        base = base or fps
        out["sizes"][str(b)] = {
            "frames_per_s": fps,
            "vs_batch_1": fps / base,
            "real_time_streams": fps / 12.5,
            "ms_per_step": ms / frames,
        }
    return out


@torch.no_grad()
def batched_decode(model: CsmForConditionalGeneration, *, rows: int, calls: int) -> dict:
    """ms to decode one new frame for each of ``rows`` turns: ``rows`` per-turn
    ``StreamingDecoder.push`` calls vs one ``BatchedStreamingDecoder.decode``, side by side on
    the same codes each call (after 5 warm-up calls), and the largest sample difference."""
    codec: Any = model.codec_model
    config: Any = model.config
    device = model.device
    rng = np.random.default_rng(0)
    size, n_q = int(config.codec_config.codebook_size), int(config.num_codebooks)
    singles = [StreamingDecoder(codec) for _ in range(rows)]
    batched = BatchedStreamingDecoder(codec, max_rows=rows)
    for i in range(rows):
        batched.admit(i)
    per_turn, one_pass, worst = [], [], 0.0
    for call in range(calls + 5):
        codes = {i: rng.integers(0, size, (1, n_q)) for i in range(rows)}
        sync(device)
        t0 = time.perf_counter()
        alone = [singles[i].push(codes[i]) for i in range(rows)]
        sync(device)
        t1 = time.perf_counter()
        together = batched.decode(codes)
        sync(device)
        t2 = time.perf_counter()
        worst = max(worst, *(float(np.abs(together[i] - alone[i]).max()) for i in range(rows)))
        if call >= 5:
            per_turn.append(1000 * (t1 - t0))
            one_pass.append(1000 * (t2 - t1))
    per_turn_ms, batched_ms = statistics.median(per_turn), statistics.median(one_pass)
    return {
        "rows": rows,
        "per_turn_pushes_ms": per_turn_ms,
        "batched_ms": batched_ms,
        "per_turn_over_batched": per_turn_ms / batched_ms,
        "max_abs_difference": worst,
    }


def time_to_first_audio(engine: Any, *, frames: int, repeats: int) -> dict:
    """Through ``CsmEngine.generate`` (the batcher thread generates and decodes): first decoded
    frame vs the whole turn decoded, for one ``frames``-frame turn."""
    from worker.engine.csm import ContextTurn

    rng = np.random.default_rng(0)
    context = [
        ContextTurn(i % 2, f"Context turn {i}, some words.", rng.integers(0, 64, (40, 4)))
        for i in range(3)
    ]
    firsts, totals = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        first: list[float] = []

        def on_frame(frame: np.ndarray, audio: np.ndarray, first: list = first) -> bool:
            if not first:
                first.append(time.perf_counter())
            return False

        params = SamplingParams(temperature=0.9, top_k=50, max_frames=frames, seed=r)
        codes = engine.generate(
            context, 1, "How soon does the first audio come?", params, on_frame=on_frame
        )
        total = time.perf_counter() - t0
        if codes.shape[0] != frames:
            raise RuntimeError(f"expected {frames} frames, got {codes.shape[0]}")
        firsts.append(1000 * (first[0] - t0))
        totals.append(1000 * total)
    return summary.first_audio(frames, firsts, totals)


@torch.no_grad()
def _step_and_decode_ms(model: CsmForConditionalGeneration, rows: int, steps: int) -> float:
    """Median ms of one frame-loop step plus the batched decode of its frames, ``rows`` sampled
    turns running (after 5 warm-up steps)."""
    loop = FrameLoop(model, max_batch=rows)
    decoder = BatchedStreamingDecoder(model.codec_model, max_rows=rows)
    for i in range(rows):
        params = SamplingParams(0.9, 50, steps + 5, i)
        loop.admit(i, prompt_embeds(model, PROMPT_POSITIONS - 7 * i, seed=i), params)
        decoder.admit(i)
    times = []
    for step in range(steps + 5):
        t0 = time.perf_counter()
        results = loop.step()
        frames = {r.key: r.frame.numpy()[None] for r in results if r.frame is not None}
        decoder.decode(frames)
        if step >= 5:
            times.append(1000 * (time.perf_counter() - t0))
        for r in results:
            if r.done:
                decoder.remove(r.key)
    return statistics.median(times)


def loop_in_a_thread(
    model: CsmForConditionalGeneration, *, sizes: list[int], steps: int, repeats: int
) -> dict:
    """ms per frame of a step plus its decode, run in a thread of its own after the main thread
    has run torch (as in a worker: the model loads in the main thread, the frame loop runs in
    ``parley-frames``), with torch's intra-op threads at 1 and at one per core; the settings
    alternate, ``repeats`` times. ``sizes`` starts with 1. CPU only."""
    cores = os.cpu_count() or 1
    counts = sorted({1, cores})
    before = torch.get_num_threads()
    times: dict[int, dict[int, list[float]]] = {t: {b: [] for b in sizes} for t in counts}
    try:
        for _ in range(repeats):
            for t in counts:
                torch.set_num_threads(t)  # new threads take it up at their first op
                torch.ones(1 << 16).add_(1)  # the main thread runs torch too
                for b in sizes:
                    got: list[float] = []
                    thread = threading.Thread(
                        target=lambda b=b, got=got: got.append(_step_and_decode_ms(model, b, steps))
                    )
                    thread.start()
                    thread.join()
                    times[t][b].append(got[0] / b)
    finally:
        torch.set_num_threads(before)
    ms = {str(t): {str(b): statistics.median(v) for b, v in by.items()} for t, by in times.items()}
    one = ms["1"]
    return {
        "cores": cores,
        "ms_per_frame": ms,
        # frames/s at batch b over batch 1, one torch thread: the engine's batching with the
        # decode counted, as a worker runs it
        "vs_batch_1": {str(b): one[str(sizes[0])] / one[str(b)] for b in sizes},
        "per_core_over_one": {str(b): ms[str(cores)][str(b)] / ms["1"][str(b)] for b in sizes},
    }
