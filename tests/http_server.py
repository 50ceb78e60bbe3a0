"""Real HTTP for tests: a free port, and a stack's API served by uvicorn in a thread (streams run
concurrently; the TestClient buffers a whole response before returning it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from api.app import create_app
from tests.servers import free_port
from tests.stack import Stack


@contextmanager
def serve(stack: Stack) -> Iterator[str]:
    """Run a fresh app for the stack's settings with uvicorn in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(stack.settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http="h11",
        ws="none",
        loop="asyncio",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
