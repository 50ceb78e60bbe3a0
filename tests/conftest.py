"""Shared fixtures: the tiny CSM checkpoint, databases, and whole stacks with real workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.http_server import serve
from tests.processes import RECOVERY
from tests.servers import OwnRedis
from tests.stack import Stack, database, running_stack

DB_KINDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.engine.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-csm") / "model", seed=0)


@pytest.fixture(scope="session")
def engine(tiny_model_dir: Path) -> Any:
    """The real engine on the tiny checkpoint, warmed up, in the test process."""
    from worker.engine.csm import CsmEngine

    engine = CsmEngine.load(str(tiny_model_dir), device="cpu")
    engine.warm_up()
    return engine


@pytest.fixture
def make_stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[Callable[..., Stack]]:
    """Build stacks on demand: ``make_stack("sqlite", workers=1, max_text_chars=5000)``."""
    stacks: list[Stack] = []
    contexts = []

    def build(db_kind: str, *, workers: int = 1, **settings: Any) -> Stack:
        tmp = tmp_path_factory.mktemp(f"stack-{db_kind}")
        ctx = database(db_kind, tmp)
        url = ctx.__enter__()
        contexts.append(ctx)
        settings.setdefault("model", str(tiny_model_dir))
        stack = Stack(db_url=url, tmp=tmp, **settings)
        stacks.append(stack)
        for _ in range(workers):
            stack.start_worker(wait=False)
        if workers:
            stack.wait_workers(workers)
        return stack

    yield build
    for stack in stacks:
        stack.close()
    for ctx in reversed(contexts):
        ctx.__exit__(None, None, None)


@pytest.fixture(scope="module", params=DB_KINDS)
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[Stack]:
    """One stack per database kind with one worker, shared by a module's tests."""
    tmp = tmp_path_factory.mktemp(f"stack-{request.param}")
    with running_stack(request.param, tmp, tiny_model_dir, max_text_chars=5000) as s:
        yield s


@pytest.fixture(scope="module")
def server(stack: Stack) -> Iterator[str]:
    """The module's ``stack`` (its own fixture, or the one above) served over real HTTP."""
    with serve(stack) as url:
        yield url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of the test's own (no persistence), which the test may kill."""
    server = OwnRedis(tmp_path / "redis")
    server.start()
    yield server
    if server.proc is not None:
        server.kill()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault cases' recovery times (tests/ops/test_faults.py), when any ran."""
    if not RECOVERY:
        return
    terminalreporter.section("time from each fault to the next turn's success")
    width = max(len(name) for name, _, _ in RECOVERY)
    for name, seconds, notes in RECOVERY:
        terminalreporter.write_line(f"{name:<{width}}  {seconds:6.1f} s  {notes}")
