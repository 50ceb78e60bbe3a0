"""``make bench-gpu``: the engine on a GPU, full-size csm-1b shapes, random weights, bf16.

Needs only torch, transformers and numpy (what the lent GPU machines have), so it runs with the
machine's own python and ``PYTHONPATH=.``: nothing is installed there. One run, every figure
side by side:

- batch 1, greedy: ms per frame of transformers' ``generate`` and of Parley's frame loop
  (same codes, checked), eager and with the depth pass in a CUDA graph; real-time factor;
- aggregate frames/s and real-time streams at batch 1..128, model only and with the streaming
  Mimi decode of every row's frame included (one decoder per turn, as the service runs today);
- time to first audio of a new turn that joins 0, 15 and 63 running turns: prefill, its first
  frame and its first decoded audio;
- GPU memory: the model, the KV cache per stream, the peak.

Writes ``bench/results/gpu-latest.json`` and prints a table. Medians, never one sample.
``--arch tiny --device cpu`` runs the same code on the tiny checkpoint (a smoke run, not speed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers

from bench import engine_bench
from bench.engine_bench import median_ms, sync
from worker.engine.batcher import Batcher
from worker.engine.codec_batch import BatchedStreamingDecoder
from worker.engine.codec_stream import StreamingDecoder
from worker.engine.frame_loop import FrameLoop
from worker.engine.types import SamplingParams

ROOT = Path(__file__).resolve().parent.parent
FRAME_MS = 80.0
GIB = 1024**3


def _mem_gib(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / GIB if device.type == "cuda" else 0.0


def _loaded_rows(model: Any, loop: FrameLoop, n: int, frames: int, tag: str) -> None:
    """Admit ``n`` sampled rows with room for ``frames`` frames each."""
    for i in range(n):
        positions = engine_bench.PROMPT_POSITIONS - 3 * (i % 40)  # rows at different positions
        embeds = engine_bench.prompt_embeds(model, positions, seed=i)
        loop.admit((tag, i), embeds, SamplingParams(0.9, 50, frames, i))


@torch.no_grad()
def decode_cost(model: Any, *, repeats: int) -> dict[str, float]:
    """ms per ``push`` of one streaming decoder: 1 frame, and 4 frames at once."""
    device = model.device
    rng = np.random.default_rng(0)
    size = int(model.config.codec_config.codebook_size)
    n_q = int(model.config.num_codebooks)
    out = {}
    for k in (1, 4):
        decoder = StreamingDecoder(model.codec_model)
        decoder.push(rng.integers(0, size, (k, n_q)))  # warm
        samples = []
        for _ in range(max(repeats * 4, 12)):
            codes = rng.integers(0, size, (k, n_q))
            sync(device)
            t0 = time.perf_counter()
            decoder.push(codes)
            samples.append(1000 * (time.perf_counter() - t0))
        out[f"push_{k}_frames_ms"] = statistics.median(samples)
    return out


@torch.no_grad()
def batch_table(
    model: Any,
    loop: FrameLoop,
    *,
    sizes: list[int],
    frames: int,
    repeats: int,
    push_ms: float,
    batched_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Per batch size: ms per step (model), frames/s, and with per-turn decode added."""
    device = model.device
    table: dict[str, Any] = {}
    base = None
    for b in sizes:
        _loaded_rows(model, loop, b, 1000, "batch")  # room for every step below
        for _ in range(2):
            loop.step()  # warm this shape
        step_ms = median_ms(loop.step, max(frames, repeats), device)
        peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else 0.0
        for row in list(loop.rows):
            loop.remove(row.key)
        fps = b * 1000 / step_ms
        base = base or fps
        with_decode_ms = step_ms + b * push_ms  # one decoder call per turn per frame, serial
        fps_decode = b * 1000 / with_decode_ms
        table[str(b)] = {
            "step_ms": step_ms,
            "frames_per_s": fps,
            "vs_batch_1": fps / base,
            "real_time_streams": fps / (1000 / FRAME_MS),
            "step_real_time_factor": step_ms / FRAME_MS,
            "with_decode_step_ms": with_decode_ms,
            "with_decode_frames_per_s": fps_decode,
            "with_decode_real_time_streams": fps_decode / (1000 / FRAME_MS),
            "peak_gib": peak,
        }
        if batched_ms and str(b) in batched_ms:  # one batched decode pass per step instead
            step_decode_ms = step_ms + batched_ms[str(b)]
            table[str(b)]["with_batched_decode_step_ms"] = step_decode_ms
            table[str(b)]["with_batched_decode_real_time_streams"] = (
                b * 1000 / step_decode_ms / (1000 / FRAME_MS)
            )
    return table


@torch.no_grad()
def first_audio(model: Any, loop: FrameLoop, *, running: list[int], repeats: int) -> dict[str, Any]:
    """A new turn joins ``n`` running turns: ms from admit to its first frame and first audio."""
    device = model.device
    out: dict[str, Any] = {}
    for n in running:
        _loaded_rows(model, loop, n, 1000, "running")
        firsts, audios = [], []
        for r in range(repeats + 1):
            embeds = engine_bench.prompt_embeds(model, engine_bench.PROMPT_POSITIONS, seed=99 + r)
            decoder = StreamingDecoder(model.codec_model)
            sync(device)
            t0 = time.perf_counter()
            loop.admit("new", embeds, SamplingParams(0.9, 50, 100, r))
            frame = None
            while frame is None:
                frame = next(x.frame for x in loop.step() if x.key == "new")
            t_frame = time.perf_counter()
            decoder.push(frame.numpy()[None])
            sync(device)
            t_audio = time.perf_counter()
            loop.remove("new")
            if r:  # the first admits a new prompt shape: warm-up
                firsts.append(1000 * (t_frame - t0))
                audios.append(1000 * (t_audio - t0))
        for row in list(loop.rows):
            loop.remove(row.key)
        out[str(n + 1)] = {
            "first_frame_ms": statistics.median(firsts),
            "first_audio_ms": statistics.median(audios),
        }
    return out


def _section(result: dict[str, Any], name: str, fn: Callable[[], Any]) -> None:
    """Run one part; a failure is recorded (with its message) and the rest still runs."""
    t0 = time.perf_counter()
    try:
        result[name] = fn()
    except Exception as exc:  # a probe that fails must not cost the other figures
        result[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(
        f"[{name}] {time.perf_counter() - t0:.1f} s: {json.dumps(result[name])[:600]}", flush=True
    )


@torch.no_grad()
def generate_reference(model: Any, *, frames: int, repeats: int) -> dict[str, Any]:
    """transformers' ``generate``, greedy, batch 1: ms per frame, and its codes (the reference)."""
    embeds = engine_bench.prompt_embeds(model, engine_bench.PROMPT_POSITIONS, seed=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=model.device)
    greedy = {"do_sample": False, "temperature": None, "top_k": None}
    kwargs: dict[str, Any] = {**greedy, **{f"depth_decoder_{k}": v for k, v in greedy.items()}}

    def run() -> Any:
        return model.generate(
            inputs_embeds=embeds, attention_mask=mask, max_new_tokens=frames, **kwargs
        )

    codes = run()[0].cpu().numpy()
    ms = median_ms(run, repeats, model.device)
    return {
        "ms_per_frame": ms / frames,
        "real_time_factor": ms / frames / FRAME_MS,
        "codes": codes.tolist(),
    }


@torch.no_grad()
def batched_decode_ms(model: Any, *, sizes: list[int], calls: int) -> dict[str, float]:
    """ms of one ``BatchedStreamingDecoder`` pass decoding one new frame for each of ``b`` rows."""
    device = model.device
    rng = np.random.default_rng(0)
    size, n_q = int(model.config.codec_config.codebook_size), int(model.config.num_codebooks)
    out = {}
    for b in sizes:
        decoder = BatchedStreamingDecoder(model.codec_model, max_rows=b)
        for i in range(b):
            decoder.admit(i)
        samples = []
        for call in range(calls + 3):
            codes = {i: rng.integers(0, size, (1, n_q)) for i in range(b)}
            sync(device)
            t0 = time.perf_counter()
            decoder.decode(codes)
            sync(device)
            if call >= 3:
                samples.append(1000 * (time.perf_counter() - t0))
        out[str(b)] = statistics.median(samples)
    return out


def _read_turn(handle: Any, began: float, reads: list[tuple[float, int]], i: int) -> None:
    """Read one turn's frames as a task thread would: (ms to first audio, samples) at ``i``."""
    first, samples = 0.0, 0
    for _frame, audio in handle:
        if not samples:
            first = 1000 * (time.perf_counter() - began)
        samples += audio.shape[0]
    reads[i] = (first, samples)


def batcher_throughput(model: Any, mode: str, *, sizes: list[int], frames: int) -> dict[str, Any]:
    """What a worker's engine gives: ``n`` sampled turns submitted at once to the real
    ``Batcher`` (frame loop plus batched decode in its thread), each read by its own thread as
    a task thread would. Aggregate frames/s (audio decoded), and first audio per turn."""
    loop = FrameLoop(model, max_batch=max(sizes), compile=mode)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    loop.warm_up(max_span=512)
    warm_s = time.perf_counter() - t0
    batcher = Batcher(loop, model.codec_model)
    out: dict[str, Any] = {"warm_up_s": warm_s}
    for n in [sizes[0], *sizes]:  # the first round warms the decoder's shapes
        embeds = [engine_bench.prompt_embeds(model, 200 - 3 * (i % 40), seed=i) for i in range(n)]
        reads: list[tuple[float, int]] = [(0.0, 0)] * n
        began = time.perf_counter()
        handles = [
            batcher.submit(e, SamplingParams(0.9, 50, frames, i)) for i, e in enumerate(embeds)
        ]
        threads = [
            threading.Thread(target=_read_turn, args=(h, began, reads, i))
            for i, h in enumerate(handles)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
        firsts = [first for first, _ in reads]
        made = sum(count for _, count in reads) / 1920
        out[str(n)] = {
            "frames_per_s": made / wall,
            "real_time_streams": made / wall / (1000 / FRAME_MS),
            "first_audio_ms_p50": statistics.median(firsts),
            "first_audio_ms_max": max(firsts),
            "wall_s": wall,
        }
    base = out[str(sizes[0])]["frames_per_s"]
    for n in sizes:
        out[str(n)]["vs_first"] = out[str(n)]["frames_per_s"] / base
    return out


def _write(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))  # after every part: a killed run keeps its figures


@torch.no_grad()
def batch1(model: Any, loop: FrameLoop, *, frames: int, repeats: int, ref: np.ndarray) -> dict:
    """ms per frame of one greedy turn alone, and whether its codes equal ``generate``'s."""
    embeds = engine_bench.prompt_embeds(model, engine_bench.PROMPT_POSITIONS, seed=1)
    params = SamplingParams(temperature=0, top_k=0, max_frames=frames)
    got: list[np.ndarray] = []
    loop.admit("check", embeds, params)
    while loop.rows:
        got += [r.frame.numpy() for r in loop.step() if r.frame is not None]
    same = None  # no reference run (--no-generate)
    if len(ref):
        same = len(got) == len(ref) and bool(np.array_equal(np.array(got), ref))
    ms = median_ms(lambda: engine_bench.run_loop(loop, [(embeds, params)]), repeats, model.device)
    return {
        "ms_per_frame": ms / frames,
        "real_time_factor": ms / frames / FRAME_MS,
        "same_codes_as_generate": same,
    }


def run_mode(
    model: Any, mode: str, args: argparse.Namespace, result: dict[str, Any], ref: np.ndarray
) -> None:
    """Every figure of one compile mode, into ``result["modes"][mode]``."""
    device = model.device
    sizes = args.batch if mode != "inductor+graphs" else args.inductor_batch
    running = [n for n in args.first_audio if mode != "inductor+graphs" or n + 1 in sizes]
    loop = FrameLoop(model, max_batch=max(sizes + [n + 1 for n in running]), compile=mode)
    out: dict[str, Any] = {}
    result.setdefault("modes", {})[mode] = out
    t0 = time.perf_counter()
    out["shapes_prepared"] = loop.warm_up(
        max_span=args.max_span, batches=sorted({*sizes, *(n + 1 for n in running), 1})
    )
    sync(device)
    out["warm_up_s"] = time.perf_counter() - t0
    print(f"[{mode}] warm-up {out['warm_up_s']:.1f} s, {out['shapes_prepared']} shapes", flush=True)
    _section(
        out,
        "batch1",
        lambda: batch1(model, loop, frames=args.frames, repeats=args.repeats, ref=ref),
    )
    push_ms = result.get("decode", {}).get("push_1_frames_ms", 0.0)
    _section(
        out,
        "batching",
        lambda: batch_table(
            model,
            loop,
            sizes=sizes,
            frames=args.frames,
            repeats=args.repeats,
            push_ms=push_ms,
            batched_ms=result.get("batched_decode"),
        ),
    )
    _section(
        out, "first_audio", lambda: first_audio(model, loop, running=running, repeats=args.repeats)
    )
    cache = loop._cache
    kv_bytes = sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values))
    out["kv_gib_per_stream"] = kv_bytes / cache.keys[0].shape[0] / GIB
    out["shapes_after"] = loop._steps.captured  # more than prepared: a turn paid for a shape
    _write(result, args.out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", choices=["tiny", "csm-1b"], default="csm-1b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=40, help="frames per timed turn / steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64, 128])
    parser.add_argument("--first-audio", type=int, nargs="+", default=[0, 15, 63])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["off", "graphs", "inductor+graphs"],
        help="compile modes to compare (PARLEY_COMPILE values)",
    )
    parser.add_argument(
        "--inductor-batch",
        type=int,
        nargs="+",
        default=[1, 64],
        help="batch sizes for inductor modes (each compiles for minutes)",
    )
    parser.add_argument(
        "--engine-modes", nargs="+", default=["graphs"], help="modes for the Batcher figures"
    )
    parser.add_argument("--engine-batch", type=int, nargs="+", default=[1, 16, 64, 128])
    parser.add_argument("--no-generate", action="store_true", help="skip transformers' generate")
    parser.add_argument("--max-span", type=int, default=512, help="span buckets warmed")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu-latest.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    began = time.perf_counter()
    tiny_dir = Path(tempfile.mkdtemp(prefix="parley-tiny-")) / "m"
    if args.arch == "tiny":
        from worker.engine.tiny import build_tiny_checkpoint

        build_tiny_checkpoint(tiny_dir, seed=0)
    if device.type == "cuda":
        with torch.device(device):  # random init on the GPU: seconds, not a minute of CPU
            model = engine_bench.load_model(args.arch, args.device, tiny_dir)
    else:
        model = engine_bench.load_model(args.arch, args.device, tiny_dir)
    result: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "arch": args.arch,
        "model": "csm-1b architecture, random weights (same shapes and cost per frame)"
        if args.arch == "csm-1b"
        else "tiny random test checkpoint (not csm-1b)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(model.dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_gib": _mem_gib(device),
        "prompt_positions": engine_bench.PROMPT_POSITIONS,
    }
    print(json.dumps(result), flush=True)
    # transformers' generate, batch 1, greedy: the reference codes and time
    if not args.no_generate:
        _section(
            result,
            "generate",
            lambda: generate_reference(model, frames=args.frames, repeats=args.repeats),
        )
    ref = np.array(result.get("generate", {}).pop("codes", []))
    _section(result, "decode", lambda: decode_cost(model, repeats=args.repeats))
    _section(result, "batched_decode", lambda: batched_decode_ms(model, sizes=args.batch, calls=10))
    for mode in args.modes:
        status: dict[str, Any] = {}
        _section(status, mode, lambda mode=mode: run_mode(model, mode, args, result, ref))
        if isinstance(status[mode], dict) and "error" in status[mode]:
            result.setdefault("modes", {}).setdefault(mode, {})["error"] = status[mode]["error"]
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for mode in args.engine_modes:
        _section(
            result,
            f"engine {mode}",
            lambda mode=mode: batcher_throughput(
                model, mode, sizes=args.engine_batch, frames=args.frames
            ),
        )
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    result["seconds"] = time.perf_counter() - began
    _write(result, args.out)
    print(json.dumps(result, indent=2))
    print(f"wrote {args.out} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
