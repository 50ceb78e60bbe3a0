"""``make bench``: Parley's benchmarks, every comparison measured side by side in one run.

Engine (in this process): ms per frame of Parley's frame loop vs transformers' ``generate``;
aggregate frames/s at several batch sizes; batched vs per-turn streaming decode; time to first
audio for a 100-frame turn.
Service (real ``parley api`` + ``parley worker`` over HTTP): queue overhead POST → running
(p50, p99), time to first streamed audio, polling requests/s; and N conversations at once
against one worker with ``PARLEY_MAX_BATCH=16`` (frames/s and its ratio to N = 1, first audio
p50/p99, the worker's CPU per frame by thread); voice agents' first audio (``bench.voice_agent``):
a 4,096-character ``/v1/audio/speech`` input against a one-sentence one, and the live socket's
first frame after a sentence completes against a REST turn's first audio.

On a machine without a GPU it runs on the tiny random checkpoint; ``--arch csm-1b --device cuda``
runs the engine part on the full-size csm-1b architecture with random weights in bf16.
Prints a table and writes ``bench/results/latest.json``. Medians, never one sample.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import engine_bench, service_bench, service_concurrency, voice_agent
from bench.summary import print_and_save

ROOT = Path(__file__).resolve().parent.parent


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_engine(args: argparse.Namespace, tiny_dir: Path) -> dict[str, Any]:
    from worker.engine.csm import CsmEngine

    model = engine_bench.load_model(args.arch, args.device, tiny_dir)
    out: dict[str, Any] = {
        "loop_vs_generate": engine_bench.loop_vs_generate(
            model, frames=args.frames, repeats=args.repeats
        ),
        "batching": engine_bench.batch_throughput(
            model, sizes=args.batch, frames=args.frames, repeats=args.repeats
        ),
        "decode": engine_bench.batched_decode(model, rows=max(args.batch), calls=args.frames),
    }
    if args.device == "cpu":
        out["loop_in_a_thread"] = engine_bench.loop_in_a_thread(
            model, sizes=sorted({1, *args.batch}), steps=20, repeats=3
        )
    del model
    if args.arch == "tiny":  # the streaming decoder needs a real processor and codec
        engine = CsmEngine.load(str(tiny_dir), device=args.device, max_batch=1)
        engine.warm_up()
        out["first_audio"] = engine_bench.time_to_first_audio(
            engine, frames=100, repeats=args.repeats
        )
    return out


def run_service(args: argparse.Namespace) -> dict[str, Any]:
    with service_bench.stack(None) as (client, ready):
        out: dict[str, Any] = {"model": ready.get("model")}
        out["queue"] = service_bench.queue_overhead(client, turns=args.turns, frames=4)
        out["first_audio"] = service_bench.first_audio(client, frames=100, repeats=3)
        out["sidecar"] = service_bench.sidecar(client, frames=25, repeats=5)
        out["polling"] = service_bench.polling_rate(
            str(client.base_url), out["queue"].pop("last_job_id"), clients=4, seconds=5
        )
        if args.voice_agent_repeats:
            out["voice_agent"] = voice_agent.measure(client, repeats=args.voice_agent_repeats)
    if args.concurrency:
        out["concurrency"] = service_concurrency.measure(
            sizes=args.concurrency, frames=100, rounds=args.concurrency_rounds, max_batch=16
        )
    return out


def _concurrency_rows(conc: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    first = next(iter(conc["sizes"]))
    for n, row in conc["sizes"].items():
        fa, cpu = row["first_audio_ms"], row["worker_cpu_ms_per_frame"]
        split = "n/a (no /proc)"
        if cpu:
            loop = f"loop {cpu['frame_loop']:.2f}"
            if "model" in cpu:
                loop += (
                    f" (model {cpu['model']:.2f}, decode {cpu['decode']:.2f}, "
                    f"other {cpu['loop_other']:.2f})"
                )
            split = (
                f"{cpu['total']:.2f} = {loop} + turns {cpu['task_threads']:.2f} "
                f"+ rest {cpu['rest']:.2f}"
            )
        rows += [
            (
                f"HTTP, {n} turns at once, 1 worker: frames/s (x N={first})",
                f"{row['frames_per_s']:.0f}  (x{row['vs_first_size']:.2f})",
            ),
            (f"  {n} at once: first audio p50 / p99 (ms)", f"{fa['p50']:.0f} / {fa['p99']:.0f}"),
            (f"  {n} at once: worker CPU ms/frame", split),
        ]
    return rows


def _table(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    eng = result["engine"]
    lg = eng["loop_vs_generate"]
    rows += [
        ("generate ms/frame (batch 1, greedy)", f"{lg['generate_ms_per_frame']:.2f}"),
        ("frame loop ms/frame (batch 1, greedy)", f"{lg['loop_ms_per_frame']:.2f}"),
        ("loop / generate", f"{lg['loop_over_generate']:.2f}  (same codes: {lg['same_codes']})"),
        ("loop real-time factor (batch 1)", f"{lg['loop_real_time_factor']:.3f}"),
    ]
    for b, row in eng["batching"]["sizes"].items():
        rows.append(
            (
                f"batch {b}: frames/s (x batch 1, real-time streams)",
                f"{row['frames_per_s']:.0f}  (x{row['vs_batch_1']:.2f}, "
                f"{row['real_time_streams']:.1f})",
            )
        )
    dec = eng["decode"]
    rows.append(
        (
            f"decode 1 frame x {dec['rows']} turns: per-turn / batched (ms)",
            f"{dec['per_turn_pushes_ms']:.1f} / {dec['batched_ms']:.1f}  "
            f"(x{dec['per_turn_over_batched']:.1f})",
        )
    )
    if "loop_in_a_thread" in eng:
        lt = eng["loop_in_a_thread"]
        many = str(lt["cores"])
        for b, ratio in lt["per_core_over_one"].items():
            rows.append(
                (
                    f"step + decode in a thread, batch {b}: ms/frame, torch threads 1 / {many}",
                    f"{lt['ms_per_frame']['1'][b]:.2f} / {lt['ms_per_frame'][many][b]:.2f}  "
                    f"(x{ratio:.2f}; 1 thread: x{lt['vs_batch_1'][b]:.2f} batch 1's frames/s)",
                )
            )
    if "first_audio" in eng:
        fa = eng["first_audio"]
        rows.append(
            (
                "engine: first audio / 100-frame turn (ms)",
                f"{fa['first_audio_ms']:.0f} / {fa['turn_ms']:.0f} "
                f"(fraction {fa['first_audio_fraction']:.3f})",
            )
        )
    svc = result.get("service")
    if svc:
        q = svc["queue"]
        fa = svc["first_audio"]
        rows += [
            ("POST turn (ms, p50)", f"{q['post_ms_p50']:.1f}"),
            (
                "POST → running (ms, p50 / p99)",
                f"{q['post_to_running_ms_p50']:.1f} / {q['post_to_running_ms_p99']:.1f}",
            ),
            (
                "job created → running (ms, p50 / p99)",
                f"{q['created_to_running_ms_p50']:.1f} / {q['created_to_running_ms_p99']:.1f}",
            ),
            (
                "HTTP: first audio / 100-frame turn (ms)",
                f"{fa['first_audio_ms']:.0f} / {fa['turn_ms']:.0f} "
                f"(fraction {fa['first_audio_fraction']:.3f})",
            ),
            (
                "polling GET /v1/jobs/{id} (req/s, 4 clients)",
                f"{svc['polling']['requests_per_s']:.0f}",
            ),
            (
                "/v1/csm/generate ÷ conversation API, 25 frames (ms, p50)",
                f"{svc['sidecar']['sidecar_over_conversation']:.2f}  "
                f"({svc['sidecar']['sidecar_ms_p50']:.0f} vs "
                f"{svc['sidecar']['conversation_api_ms_p50']:.0f})",
            ),
        ]
        if "voice_agent" in svc:
            rows += voice_agent.rows(svc["voice_agent"])
        if "concurrency" in svc:
            rows += _concurrency_rows(svc["concurrency"])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", choices=["tiny", "csm-1b"], default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=50, help="frames per turn (engine)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--turns", type=int, default=40, help="turns for queue overhead")
    parser.add_argument("--no-service", action="store_true", help="engine benchmarks only")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="*",
        default=[1, 8, 16],
        help="conversations at once against one worker (none: skip)",
    )
    parser.add_argument("--concurrency-rounds", type=int, default=2)
    parser.add_argument(
        "--voice-agent-repeats",
        type=int,
        default=5,
        help="rounds of the voice-agent figures after a warm-up one (0: skip them)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    from worker.engine.tiny import build_tiny_checkpoint

    tiny_dir = build_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="parley-tiny-")) / "m", seed=0)
    began = time.perf_counter()
    result: dict[str, Any] = {
        "arch": args.arch,
        "model": (
            "tiny random test checkpoint (not csm-1b: its weights cannot be had here)"
            if args.arch == "tiny"
            else "csm-1b architecture, random weights (same shapes and cost per frame)"
        ),
        "device": _device_name(args.device),
        "dtype": "bfloat16" if args.device.startswith("cuda") else "float32",
        "torch": torch.__version__,
        "engine": run_engine(args, tiny_dir),
    }
    if not args.no_service:
        result["service"] = run_service(args)
    result["seconds"] = time.perf_counter() - began
    print(f"model: {result['model']}\ndevice: {result['device']} ({result['dtype']})")
    print_and_save(_table(result), result, args.out)
    print(f"wrote {args.out} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
