"""``parley up | api | worker | flower | migrate | keys | healthcheck | voices | say | render |
tiny-model``."""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from parley.healthcheck import add_healthcheck_parser
from parley.keys import add_keys_parser, open_mode_refusal
from parley.speak import add_client_parsers
from parley.voices import add_voices_parser
from shared.devices import count_visible_gpus, is_device, list_gpus, worker_devices
from shared.logs import configure_logging
from shared.settings import Settings, cuda_visible_devices

log = logging.getLogger("parley")


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from shared.db.migrate import upgrade

    upgrade(settings)
    log.info("database at %s is up to date", settings.database_url)
    return 0


def refuse_open_mode(settings: Settings, args: argparse.Namespace) -> bool:
    """Say why and return True when the API must not start open on its host."""
    refusal = open_mode_refusal(settings, args.host or settings.host)
    if refusal is not None:
        print(f"parley: {refusal}", file=sys.stderr)
    return refusal is not None


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app

    if refuse_open_mode(settings, args):
        return 2
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's lines go through our handler (format, request id)
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from worker.main import run_worker

    if args.device is not None:  # `parley up` gives each worker its own
        settings = settings.model_copy(update={"device": args.device})
    return run_worker(settings)


def device_arg(value: str) -> str:
    if not is_device(value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:K, not {value!r}")
    return value


def up_worker_devices(settings: Settings, workers: int) -> list[str]:
    """Each worker's device: round-robin over the GPUs the workers will see, unless
    ``PARLEY_DEVICE`` names one device (``cpu``, ``cuda:K``). CUDA stays untouched here."""
    if settings.device not in ("auto", "cuda") or workers == 0:
        return [settings.device] * workers
    gpus = count_visible_gpus(
        cuda_visible_devices=cuda_visible_devices(), nvidia_smi_listing=list_gpus()
    )
    return worker_devices(settings.device, workers=workers, gpus=gpus)


def cmd_flower(settings: Settings, args: argparse.Namespace) -> int:
    """Flower on the broker, with the workers' own key prefix and transport options; arguments
    after ``flower`` go to Flower. It listens on 127.0.0.1 unless given ``--address``."""
    from shared.jobs.queue import create_celery

    extra = list(args.extra)
    if not any(a.startswith("--address") for a in extra):
        extra.append("--address=127.0.0.1")
    app = create_celery(settings)
    # Flower picks its broker view by the broker URL's scheme (redis, sentinel), which a
    # transport named by module path hides ("'redis' broker is not supported"). Flower takes no
    # turns, so kombu's own transport for the URL serves it.
    app.conf.broker_transport = None
    code = app.start(["flower", *extra])
    return int(code or 0)


def cmd_tiny_model(_settings: Settings, args: argparse.Namespace) -> int:
    from worker.engine.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(Path(args.dir), seed=args.seed)
    print(f"tiny random CSM checkpoint (test model, audio is noise) written to {path}")
    return 0


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    """Migrate, make sure Redis answers (starting the bundled one for a plain redis:// URL that
    does not), then run the workers and the API as supervised child processes: any that exits
    is started again."""
    from parley.supervisor import EXIT_MISCONFIGURED, Supervisor, command
    from shared.redis_io.server import redis_answers, start_redis

    cmd_migrate(settings, args)
    if refuse_open_mode(settings, args):
        return 2
    supervisor = Supervisor()
    # SIGTERM (a service manager) and SIGINT (Ctrl-C) end the loop; the children stop below.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: supervisor.request_stop())
    try:
        target = settings.redis
        answers = redis_answers(settings.redis_url)
        if not answers and target.scheme == "redis":
            url = urlsplit(settings.redis_url)
            redis_port, redis_host = url.port or 6379, url.hostname or "127.0.0.1"
            log.info(
                "no Redis answers at %s; starting the bundled redis-server on port %d",
                target.redacted,
                redis_port,
            )

            def redis() -> subprocess.Popen[bytes]:
                return start_redis(redis_port, workdir=Path(".parley/redis"), host=redis_host)

            supervisor.add("redis", redis)
        elif not answers:  # Sentinel, TLS or a socket: a Redis run elsewhere, never one of ours
            what = "no sentinel names a primary that answers" if target.is_sentinel else "no answer"
            log.warning(
                "Redis at %s: %s; not starting one (the bundled redis-server is only for a "
                "plain redis:// URL): start that Redis, or correct PARLEY_REDIS_URL",
                target.redacted,
                what,
            )
        devices = up_worker_devices(settings, args.workers)
        if devices:
            log.info("starting %d worker(s) on: %s", len(devices), ", ".join(devices))
        parley = [sys.executable, "-m", "parley"]
        for k, device in enumerate(devices):
            supervisor.add(f"worker-{k}", command([*parley, "worker", "--device", device]))
        host, port = args.host or settings.host, args.port or settings.port
        supervisor.add("api", command([*parley, "api", "--host", host, "--port", str(port)]))
        supervisor.run()
    finally:
        supervisor.stop()
    return EXIT_MISCONFIGURED if supervisor.fatal is not None else 0


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
    worker = sub.add_parser("worker", help="run one worker (loads the model once)")
    worker.add_argument(
        "--device", type=device_arg, help="cpu, cuda or cuda:K (default: PARLEY_DEVICE)"
    )
    worker.set_defaults(func=cmd_worker)
    sub.add_parser(
        "flower", help="run Celery's Flower monitor on the broker (Flower's options follow)"
    ).set_defaults(func=cmd_flower)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    add_keys_parser(sub)
    add_healthcheck_parser(sub)
    add_voices_parser(sub)
    add_client_parsers(sub)
    tiny = sub.add_parser("tiny-model", help="build the tiny random CSM test checkpoint")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "flower":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        settings = Settings()
    except ValidationError as exc:  # one line a setting, naming it and what is wrong
        for error in exc.errors():
            name = "PARLEY_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"parley: {name}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings)
    code: int = args.func(settings, args)
    return code
