"""``make load``: many concurrent clients against a real Parley stack on this machine.

Starts ``parley api`` and ``--workers`` ``parley worker`` processes on the tiny random
checkpoint (the bench stack of :mod:`bench.service_bench`), on a fresh SQLite file or a fresh
PostgreSQL database (``--db``, dropped afterwards), with a generated bearer key; or drives a
running server (``--url``, ``--key``). Then ``--conversations`` clients each post ``--turns``
turns and poll them to the end, ``--stream`` of those turns are listened to as they are
generated, and ``--pollers`` clients ask for jobs and turn lists meanwhile. Every accepted turn
is read back at the end. Prints a table and writes ``bench/results/load-latest.json``; exits 1
when a turn was lost or a request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import load_report, service_bench
from bench.load_driver import LoadConfig, drive
from bench.summary import print_and_save

ROOT = Path(__file__).resolve().parent.parent
TEST_MODEL_NOTE = (
    "tiny random test checkpoint standing in for csm-1b (whose weights cannot be had here); "
    "its audio is noise, so these are pipeline figures, not csm-1b speed"
)


@contextmanager
def scratch_database(kind: str, tmp: Path) -> Iterator[str | None]:
    """None for the bench stack's own SQLite file; a fresh PostgreSQL database, dropped after."""
    if kind == "sqlite":
        yield None
        return
    from tests.stack import database  # the same fresh-database helper the tests use

    with database(kind, tmp) as url:
        yield url


def _stack_env(args: argparse.Namespace, key: str) -> dict[str, str]:
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    env = {
        "PARLEY_API_KEYS": key,
        "PARLEY_WORKER_TORCH_THREADS": str(threads),
        # The load test measures the pipeline, not the limiter; --set puts it back.
        "PARLEY_RATE_LIMIT_PER_MINUTE": "0",
    }
    for item in args.set:
        name, _, value = item.partition("=")
        env[f"PARLEY_{name.strip().upper()}"] = value
    return env


def _config(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        conversations=args.conversations,
        turns=args.turns,
        pollers=args.pollers,
        frames=args.frames,
        stream=args.stream,
        poll_interval_s=args.poll_interval,
        timeout_s=args.timeout,
    )


def _machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "loadavg_before": list(os.getloadavg()),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = _config(args)
    if args.url:
        result = asyncio.run(drive(args.url, config, key=args.key))
        return load_report.report(result, machine=_machine(), server=args.url)
    key = args.key or secrets.token_urlsafe(24)
    env = _stack_env(args, key)
    tmp = Path(tempfile.mkdtemp(prefix="parley-load-"))
    machine = _machine()
    with (
        scratch_database(args.db, tmp) as url,
        service_bench.stack(None, env, workers=args.workers, database_url=url, log_dir=tmp) as (
            client,
            ready,
        ),
    ):
        result = asyncio.run(drive(str(client.base_url), config, key=key))
    return load_report.report(
        result,
        model=TEST_MODEL_NOTE if ready.get("test_model") else ready.get("model"),
        machine=machine,
        database=args.db,
        workers=args.workers,
        stack_settings={k: v for k, v in env.items() if k != "PARLEY_API_KEYS"},
        logs=str(tmp),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=4, help="turns per conversation")
    parser.add_argument("--pollers", type=int, default=2, help="clients polling GET endpoints")
    parser.add_argument("--workers", type=int, default=2, help="parley worker processes")
    parser.add_argument("--frames", type=int, default=12, help="frames (80 ms each) per turn")
    parser.add_argument("--stream", type=int, default=4, help="turns also listened to")
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--key", help="bearer key to send (and to start the stack with)")
    parser.add_argument("--url", help="drive this running server instead of starting a stack")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Parley setting for the stack, e.g. --set max_batch=4 (repeatable)",
    )
    parser.add_argument("--poll-interval", type=float, default=0.1, help="s between job polls")
    parser.add_argument("--timeout", type=float, default=600, help="s for the load phase")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load-latest.json")
    args = parser.parse_args()
    result = run(args)
    print(f"model: {result.get('model', result.get('server'))}")
    print(f"machine: {result['machine']['cores']} cores, database: {result.get('database', '-')}")
    print_and_save(load_report.table(result), result, args.out)
    print(f"wrote {args.out}")
    return 0 if result["turns"]["lost"] == 0 and result["error_count"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
