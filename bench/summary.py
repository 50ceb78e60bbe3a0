"""Summaries shared by the engine and service benchmarks."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any


def first_audio(frames: int, firsts_ms: list[float], totals_ms: list[float]) -> dict:
    """Medians of time to first audio and of the whole turn, and the fraction between them."""
    first_ms, total_ms = statistics.median(firsts_ms), statistics.median(totals_ms)
    return {
        "frames": frames,
        "first_audio_ms": first_ms,
        "turn_ms": total_ms,
        "first_audio_fraction": first_ms / total_ms,
        "real_time_factor": total_ms / (frames * 80),
    }


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float]) -> dict[str, float | int | None]:
    """Count, p50 and p99 (nearest rank) of ``values``; None quantiles when there are none."""
    if not values:
        return {"n": 0, "p50": None, "p99": None}
    return {"n": len(values), "p50": percentile(values, 0.5), "p99": percentile(values, 0.99)}


def print_and_save(rows: list[tuple[str, str]], result: dict[str, Any], out: Path) -> None:
    """Print a bench's table (name, value per line) and write its whole result as JSON."""
    width = max(len(k) for k, _ in rows) + 2
    for name, value in rows:
        print(f"{name:<{width}}{value}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
