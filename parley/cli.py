"""``parley up | api | worker | migrate | tiny-model``."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from shared.settings import Settings

log = logging.getLogger("parley")


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from shared.migrate import upgrade

    upgrade(settings)
    log.info("database at %s is up to date", settings.database_url)
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level.lower(),
    )
    return 0


def cmd_worker(settings: Settings, _args: argparse.Namespace) -> int:
    from worker.main import run_worker

    return run_worker(settings)


def cmd_tiny_model(_settings: Settings, args: argparse.Namespace) -> int:
    from worker.engine.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(Path(args.dir), seed=args.seed)
    print(f"tiny random CSM checkpoint (test model, audio is noise) written to {path}")
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Migrate, make sure Redis answers (starting the bundled one if not), start workers, serve."""
    from shared.redis_server import redis_answers, start_redis

    cmd_migrate(settings, args)
    # uvicorn re-raises SIGTERM after its own shutdown; make that an exit through `finally`
    # below, so the workers and Redis started here stop with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    children: list[subprocess.Popen[bytes]] = []
    if not redis_answers(settings.redis_url):
        url = urlsplit(settings.redis_url)
        port = url.port or 6379
        log.info(
            "no Redis answers at %s; starting the bundled redis-server on port %d",
            settings.redis_url,
            port,
        )
        children.append(
            start_redis(port, workdir=Path(".parley/redis"), host=url.hostname or "127.0.0.1")
        )
    try:
        for _ in range(args.workers):
            children.append(subprocess.Popen([sys.executable, "-m", "parley", "worker"]))
        return cmd_api(settings, args)
    finally:
        for child in reversed(children):
            child.terminate()
        for child in reversed(children):
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="migrate, then run the API and workers (and Redis if needed)")
    up.add_argument("--host")
    up.add_argument("--port", type=int)
    up.add_argument("--workers", type=int, default=1)
    up.set_defaults(func=cmd_up)
    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=cmd_api)
    sub.add_parser("worker", help="run one worker (loads the model once)").set_defaults(
        func=cmd_worker
    )
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    tiny = sub.add_parser("tiny-model", help="build the tiny random CSM test checkpoint")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    code: int = args.func(settings, args)
    return code
