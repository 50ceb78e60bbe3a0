"""Continuous batching: one thread runs every current turn together, frame by frame.

Callers (the worker's task threads) ``submit`` a prompt and iterate their ``TurnHandle``: frames
and their audio arrive as the loop makes them. After each frame-loop step the thread decodes the
new frame of every row in one batched streaming pass (``BatchedStreamingDecoder``), so a turn
gets its frame with its samples. Between frames the loop admits waiting turns into free slots
(prefilled together, and into the decoder) and drops turns that ended, reached their length,
were cancelled or failed, so a slot frees at once. The loop thread does model and decoder
passes only, no I/O: the callers stream (``worker.step_publisher``, one Redis pipeline a step)
and store. The decoder belongs to this thread alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from shared.errors import EngineError
from worker.engine.codec_batch import BatchedStreamingDecoder
from worker.engine.frame_loop import FrameLoop, FrameResult
from worker.engine.types import SamplingParams

log = logging.getLogger(__name__)

_END = object()
# Positions (rows x longest prompt, padded) one prefill pass may hold: a burst of new turns is
# prefilled in a few passes, each costing about one prompt's kernel launches on a GPU, so the
# running turns wait for those passes rather than for one prefill per new turn.
PREFILL_POSITIONS = 16_384


class TurnHandle:
    """One submitted turn: iterate it for ``(frame, audio)`` pairs, in order: the frame's codes
    ``(num_codebooks,)`` int64 and its ``frame_samples`` float32 samples, the continuation of the
    turn's audio (the streaming decode of its frames so far).

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

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            item = self._frames.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, tuple)
            yield item

    def _put(self, item: object) -> None:
        self._frames.put(item)


class Batcher:
    """Owns a :class:`FrameLoop`, a :class:`BatchedStreamingDecoder` and the thread that drives
    them."""

    def __init__(self, loop: FrameLoop, codec_model: Any) -> None:
        """Wrap ``loop`` and decode with ``codec_model`` (the model's ``MimiModel``); the thread
        starts with the first submission.

        Raises:
            EngineError: The codec cannot be streamed (see ``BatchedStreamingDecoder``).
        """
        self._loop = loop
        self._decoder = BatchedStreamingDecoder(codec_model, max_rows=loop.max_batch)
        self._waiting: deque[TurnHandle] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        # steps_by_rows[n]: frame-loop steps run with n rows, since start (read for metrics).
        self.steps_by_rows = [0] * (loop.max_batch + 1)
        # Wall seconds this thread spent, since start: prefilling and stepping the model
        # ("model"), decoding ("decode"), and whole iterations with turns to run ("loop",
        # which also holds handing frames out). Read for benchmarks, through the heartbeat;
        # replaced whole once per iteration, so a reader never sees one iteration half counted.
        self.busy_s = {"model": 0.0, "decode": 0.0, "loop": 0.0}

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
                    self._drop(row.key, _END)
            began = time.perf_counter()
            self._admit(joining)
            if not loop.rows:
                continue
            self.steps_by_rows[len(loop.rows)] += 1
            try:
                results = loop.step()
                model_s = time.perf_counter() - began
            except Exception as exc:  # fail every turn in the batch, keep the thread alive
                log.exception("frame loop step failed")
                error = EngineError(f"generation failed: {type(exc).__name__}: {exc}")
                for row in list(loop.rows):
                    assert isinstance(row.key, TurnHandle)
                    self._drop(row.key, error)
                continue
            decode_s = self._deliver(results)
            busy = self.busy_s
            self.busy_s = {
                "model": busy["model"] + model_s,
                "decode": busy["decode"] + decode_s,
                "loop": busy["loop"] + time.perf_counter() - began,
            }

    def _deliver(self, results: list[FrameResult]) -> float:
        """Decode every new frame in one pass; hand each turn its frame and samples (or its end,
        or the error that ended it). Returns the seconds the decode took."""
        frames: dict[object, np.ndarray] = {}  # (1, num_codebooks) int64
        for result in results:
            owner = result.key
            assert isinstance(owner, TurnHandle)
            if result.frame is None:
                continue
            try:  # a row the codec cannot decode fails alone
                codes = result.frame.numpy().astype(np.int64)[None]
                frames[owner] = self._decoder.check_codes(codes)
            except EngineError as exc:
                self._drop(owner, exc)
        audio: dict[object, np.ndarray] = {}
        decode_s = 0.0
        if frames:
            began = time.perf_counter()
            try:
                audio = self._decoder.decode(frames)
                decode_s = time.perf_counter() - began
            except Exception as exc:  # fail the turns of this pass, keep the thread alive
                log.exception("batched streaming decode failed")
                error = exc if isinstance(exc, EngineError) else EngineError(f"decoding: {exc!r}")
                for key in frames:
                    assert isinstance(key, TurnHandle)
                    self._drop(key, error)
                return time.perf_counter() - began
        for result in results:
            owner = result.key
            assert isinstance(owner, TurnHandle)
            if result.frame is not None:
                if owner not in frames:
                    continue  # failed above
                owner._put((frames[owner][0], audio[owner]))
            if result.done:
                self._decoder.remove(owner)
                owner._put(_END)
        return decode_s

    def _drop(self, handle: TurnHandle, item: object) -> None:
        """Take ``handle`` out of the loop and the decoder; ``item`` (end or error) ends it."""
        self._loop.remove(handle)
        self._decoder.remove(handle)
        handle._put(item)

    def _admit(self, handles: list[TurnHandle]) -> None:
        """Prefill the joining turns, several in one pass (up to ``PREFILL_POSITIONS``
        positions a pass), and add them to the decoder; a turn that cannot join fails alone."""
        ready: list[TurnHandle] = []
        for handle in handles:
            if handle.cancelled.is_set():
                handle._put(_END)
                continue
            try:
                self._loop.check_admissible(handle.inputs_embeds, handle.params)
            except ValueError as exc:
                log.warning("could not admit a turn: %s", exc)
                handle._put(EngineError(f"generation failed: ValueError: {exc}"))
                continue
            ready.append(handle)
        for group in _prefill_groups(ready):
            try:
                self._loop.admit_many([(h, h.inputs_embeds, h.params) for h in group])
                for handle in group:
                    self._decoder.admit(handle)
            except Exception as exc:
                log.exception("could not admit %d turn(s)", len(group))
                error = EngineError(f"generation failed: {type(exc).__name__}: {exc}")
                for handle in group:
                    self._drop(handle, error)


def _prefill_groups(handles: list[TurnHandle]) -> list[list[TurnHandle]]:
    """Consecutive groups whose padded prefill (rows x longest prompt) stays within
    ``PREFILL_POSITIONS``; a prompt longer than that goes alone."""
    groups: list[list[TurnHandle]] = []
    longest = 0
    for handle in handles:
        length = handle.inputs_embeds.shape[1]
        group = groups[-1] if groups else None
        if group and max(longest, length) * (len(group) + 1) <= PREFILL_POSITIONS:
            group.append(handle)
            longest = max(longest, length)
        else:
            groups.append([handle])
            longest = length
    return groups
