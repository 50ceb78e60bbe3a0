"""The load test's report: one JSON-ready dict from a :class:`LoadRun`, and its table."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench import summary
from bench.load_driver import GET_JOB, POST_TURN, LoadRun

FRAME_MS = 80


def report(run: LoadRun, **about: Any) -> dict[str, Any]:
    """The figures of one run; ``about`` (machine, model, database, ...) is kept as given."""
    config = run.config
    seconds = run.load_s or float("nan")
    after_ms = [p.succeeded_after_ms for p in run.posted if p.succeeded_after_ms is not None]
    errors = run.recorder.errors()
    return {
        **about,
        "config": asdict(config),
        "wall_s": run.load_s,
        "turns": {
            "posted": config.conversations * config.turns,
            "accepted": len(run.posted),
            "rejected": run.rejected_posts,
            "succeeded": run.verified,
            "lost": run.lost,
            "duplicates": run.duplicates,
            "job_status": _count(p.status for p in run.posted),
        },
        "errors": errors,
        "error_count": sum(n for by_status in errors.values() for n in by_status.values()),
        "rate_limited": run.recorder.rate_limited(),
        "retries": dict(run.recorder.retries),
        "retry_wait_s": run.recorder.retry_wait_s,
        "streams": {
            "listened": sum(p.streamed is not None for p in run.posted),
            "mismatched": run.stream_mismatches,
        },
        "throughput": {
            "turns_per_s": run.verified / seconds,
            "audio_frames_per_s": run.audio_ms / FRAME_MS / seconds,
            "requests_per_s": run.load_requests / seconds,
            "audio_s_per_s": run.audio_ms / 1000 / seconds,
        },
        "latency_ms": {
            "post_turn": summary.spread(run.recorder.latencies_ms[POST_TURN]),
            "get_job": summary.spread(run.recorder.latencies_ms[GET_JOB]),
            "post_to_succeeded": summary.spread(after_ms),
            "first_stream_byte": summary.spread(run.first_byte_ms),
        },
        "requests": run.load_requests,
        # Cores busy during the load phase: the whole machine (every user of it), this client,
        # and each process of a stack this process started.
        "cpu_cores": run.cpu_cores,
        # CPU per unit of work: steadier than rates on a machine that others share.
        "cpu_ms": _cpu_ms(run),
    }


def _cpu_ms(run: LoadRun) -> dict[str, float]:
    workers = sum(v for k, v in run.cpu_cores.items() if k.startswith("worker-"))
    out = {}
    if workers and run.verified:
        out["workers_per_turn"] = 1000 * workers * run.load_s / run.verified
    if "api" in run.cpu_cores and run.load_requests:
        out["api_per_request"] = 1000 * run.cpu_cores["api"] * run.load_s / run.load_requests
    return out


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _ms(spread: dict[str, Any]) -> str:
    if not spread["n"]:
        return "-"
    return f"{spread['p50']:.0f} / {spread['p99']:.0f}  (n={spread['n']})"


def _cores(by_process: dict[str, float]) -> dict[str, float]:
    """machine, client, api, and the workers summed."""
    out = {k: v for k, v in by_process.items() if not k.startswith("worker-")}
    workers = [v for k, v in by_process.items() if k.startswith("worker-")]
    if workers:
        out[f"{len(workers)} workers"] = sum(workers)
    return out


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    t, tp, lat = result["turns"], result["throughput"], result["latency_ms"]
    c = result["config"]
    cores = _cores(result["cpu_cores"])
    return [
        (
            "load",
            f"{c['conversations']} conversations × {c['turns']} turns × {c['frames']} frames, "
            f"{c['pollers']} pollers, {c['stream']} streamed",
        ),
        ("wall time (s)", f"{result['wall_s']:.1f}"),
        ("turns accepted / succeeded", f"{t['accepted']} / {t['succeeded']}"),
        ("lost turns / duplicates", f"{t['lost']} / {t['duplicates']}"),
        ("errors", f"{result['error_count']}  {result['errors'] or ''}".rstrip()),
        (
            "429s / retries (s waited, all clients)",
            f"{sum(result['rate_limited'].values())} / {sum(result['retries'].values())} "
            f"({result['retry_wait_s']:.0f})",
        ),
        ("streams listened / mismatched", "{listened} / {mismatched}".format(**result["streams"])),
        ("turns/s", f"{tp['turns_per_s']:.2f}"),
        (
            "audio frames/s (audio s per s)",
            f"{tp['audio_frames_per_s']:.1f}  ({tp['audio_s_per_s']:.2f})",
        ),
        ("HTTP requests/s", f"{tp['requests_per_s']:.0f}"),
        ("POST turn ms, p50 / p99", _ms(lat["post_turn"])),
        ("GET job ms, p50 / p99", _ms(lat["get_job"])),
        ("POST → job succeeded ms, p50 / p99", _ms(lat["post_to_succeeded"])),
        ("POST → first streamed byte ms, p50 / p99", _ms(lat["first_stream_byte"])),
        ("cores busy: " + ", ".join(cores), " ".join(f"{v:.2f}" for v in cores.values())),
        (
            "CPU ms: workers per turn, API per request",
            " / ".join(
                f"{result['cpu_ms'][k]:.1f}"
                for k in ("workers_per_turn", "api_per_request")
                if k in result["cpu_ms"]
            )
            or "-",
        ),
    ]
