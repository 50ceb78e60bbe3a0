"""Continuous batching: one thread runs every current turn together, frame by frame.

Callers (the worker's task threads) ``submit`` a prompt and iterate their ``TurnHandle``: frames
arrive as the loop makes them. Between frames the loop admits waiting turns into free slots and
drops turns that ended, reached their length or were cancelled, so a slot frees at once. The loop
thread does no I/O: decoding, streaming and storing happen in the caller's thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator

import numpy as np
import torch

from shared.errors import EngineError
from worker.engine.frame_loop import FrameLoop
from worker.engine.types import SamplingParams

log = logging.getLogger(__name__)

_END = object()


class TurnHandle:
    """One submitted turn: iterate it for its frames ``(num_codebooks,)`` int64, in order.

    Iteration stops after the last frame (end frame or ``max_frames``), or soon after
    ``cancel()``. A failure in the loop is raised from the iteration as ``EngineError``.
    """

    def __init__(self, inputs_embeds: torch.Tensor, params: SamplingParams) -> None:
        """A turn waiting for a slot; made by :meth:`Batcher.submit`."""
        self.inputs_embeds = inputs_embeds
        self.params = params
        self.cancelled = threading.Event()
        self._frames: queue.SimpleQueue[object] = queue.SimpleQueue()

    def cancel(self) -> None:
        """Ask the loop to drop this turn at the next frame boundary."""
        self.cancelled.set()

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            item = self._frames.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, np.ndarray)
            yield item

    def _put(self, item: object) -> None:
        self._frames.put(item)


class Batcher:
    """Owns a :class:`FrameLoop` and the thread that drives it."""

    def __init__(self, loop: FrameLoop) -> None:
        """Wrap ``loop``; the thread starts with the first submission."""
        self._loop = loop
        self._waiting: deque[TurnHandle] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        # steps_by_rows[n]: frame-loop steps run with n rows, since start (read for metrics).
        self.steps_by_rows = [0] * (loop.max_batch + 1)

    @property
    def active(self) -> int:
        """Turns in the batch right now."""
        return len(self._loop.rows)

    @property
    def max_batch(self) -> int:
        """Turns the batch can hold."""
        return self._loop.max_batch

    def submit(self, inputs_embeds: torch.Tensor, params: SamplingParams) -> TurnHandle:
        """Queue a turn; it joins the batch at the next frame boundary with a free slot."""
        handle = TurnHandle(inputs_embeds, params)
        with self._wake:
            self._waiting.append(handle)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="parley-frames", daemon=True)
                self._thread.start()
            self._wake.notify()
        return handle

    def _run(self) -> None:
        loop = self._loop
        while True:
            with self._wake:
                while not self._waiting and not loop.rows:
                    self._wake.wait()
                joining: list[TurnHandle] = []
                while self._waiting and loop.free_slots > len(joining):
                    joining.append(self._waiting.popleft())
            for row in list(loop.rows):
                assert isinstance(row.key, TurnHandle)
                if row.key.cancelled.is_set():
                    loop.remove(row.key)
                    row.key._put(_END)
            for handle in joining:
                self._admit(handle)
            if not loop.rows:
                continue
            self.steps_by_rows[len(loop.rows)] += 1
            try:
                results = loop.step()
            except Exception as exc:  # fail every turn in the batch, keep the thread alive
                log.exception("frame loop step failed")
                error = EngineError(f"generation failed: {type(exc).__name__}: {exc}")
                for row in list(loop.rows):
                    loop.remove(row.key)
                    assert isinstance(row.key, TurnHandle)
                    row.key._put(error)
                continue
            for result in results:
                owner = result.key
                assert isinstance(owner, TurnHandle)
                if result.frame is not None:
                    owner._put(result.frame.numpy().astype(np.int64))
                if result.done:
                    owner._put(_END)

    def _admit(self, handle: TurnHandle) -> None:
        if handle.cancelled.is_set():
            handle._put(_END)
            return
        try:
            self._loop.admit(handle, handle.inputs_embeds, handle.params)
        except Exception as exc:
            log.exception("could not admit a turn")
            handle._put(EngineError(f"generation failed: {type(exc).__name__}: {exc}"))
