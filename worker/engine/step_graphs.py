"""Fixed-shape steps of the frame loop, run eagerly, compiled, or replayed from CUDA graphs.

A frame costs one backbone step and a 31-step depth pass: about 2,000 small kernels at batch 1
for csm-1b, so on a GPU the time goes to launching them, not to arithmetic (on an H200 the eager
depth pass took 82 ms, the same pass replayed from a CUDA graph 15 ms). Both steps have fixed
shapes once the batch is padded to a *bucket* (1, 2, 4, 8, ... up to ``max_batch``) and the
backbone's attention span to a multiple of ``SPAN_BUCKET``; :class:`StepRunner` runs a step
function on such inputs in one of the :data:`CompileMode`\\ s:

- ``off``: the function as it is (eager);
- ``inductor``: through ``torch.compile`` (fused kernels; one compilation per shape);
- ``graphs``: captured once per shape into a CUDA graph, then replayed: the inputs are copied
  into the graph's own static tensors and its static outputs returned (read them before the
  next call with the same key);
- ``inductor+graphs``: the compiled function, captured into CUDA graphs.

A step function must take only tensors (plus hashable constants in ``key``) and reach other
state only through tensors that live as long as the runner (weights, KV caches, tables): a graph
replays against the memory it was captured with. It must not synchronise with the host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from shared.compile_modes import COMPILE_AUTO, COMPILE_MODES, COMPILE_OFF, CompileMode

log = logging.getLogger(__name__)

SPAN_BUCKET = 256  # backbone attention spans are padded to a multiple of this many positions


def resolve_compile_mode(setting: str, device: torch.device) -> CompileMode:
    """The mode for a ``PARLEY_COMPILE`` value on ``device``.

    ``auto`` (and ``1``/``true``/``on``): CUDA graphs on CUDA, eager on CPU (there the frame
    loop's Python, not kernel launches, is the cost and compiling takes minutes of CPU per
    bucket). ``0``/``false``/``off``: eager. A named mode is taken as it is; graphs need CUDA.

    Raises:
        ValueError: An unknown value, or graphs asked for without CUDA.
    """
    value = setting.strip().lower()
    if value in COMPILE_AUTO:
        return "graphs" if device.type == "cuda" else "off"
    if value in COMPILE_OFF:
        return "off"
    if value not in COMPILE_MODES:
        raise ValueError(
            f"unknown compile mode {setting!r} (expected auto, off, {', '.join(COMPILE_MODES[1:])})"
        )
    mode = cast(CompileMode, value)
    if "graphs" in mode and device.type != "cuda":
        raise ValueError(f"compile mode {mode!r} needs CUDA; the model is on {device}")
    return mode


def batch_buckets(max_batch: int) -> list[int]:
    """Padded batch sizes: powers of two below ``max_batch``, then ``max_batch`` itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch]


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``n`` rows."""
    return next(b for b in buckets if b >= n)


def span_for(span: int, max_positions: int) -> int:
    """``span`` rounded up to a multiple of :data:`SPAN_BUCKET`, at most ``max_positions``."""
    return min(max_positions, -(-span // SPAN_BUCKET) * SPAN_BUCKET)


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    outputs: Any


class StepRunner:
    """Runs step functions in one :data:`CompileMode`; one instance per frame loop (one thread).

    Attributes:
        mode: The mode in use.
        pads: Whether callers must pad to buckets (every mode but ``off``).
        captured: How many CUDA graphs were captured (or shapes compiled) so far.
    """

    def __init__(self, mode: CompileMode, device: torch.device) -> None:
        if "graphs" in mode and device.type != "cuda":
            raise ValueError(f"compile mode {mode!r} needs CUDA, got {device}")
        self.mode = mode
        self.pads = mode != "off"
        self.captured = 0
        self._device = device
        self._compiled: dict[str, Callable[..., Any]] = {}
        self._graphs: dict[tuple[Any, ...], _Graph] = {}
        self._compiled_shapes: set[tuple[Any, ...]] = set()
        self._pool: Any = torch.cuda.graph_pool_handle() if "graphs" in mode else None
        if "inductor" in mode:
            # one compiled graph per bucket and variant: raise dynamo's limit of 8 per function
            dynamo: Any = torch._dynamo.config
            limit = max(getattr(dynamo, "recompile_limit", 8), 256)
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(dynamo, name):
                    setattr(dynamo, name, limit)

    def run(
        self, name: str, fn: Callable[..., Any], key: tuple[Any, ...], *inputs: torch.Tensor
    ) -> Any:
        """``fn(*inputs)`` in this runner's mode; ``key`` names the shape (and any constants
        ``fn`` closes over) so each distinct one gets its own graph."""
        if self.mode == "off":
            return fn(*inputs)
        step = self._compiled_fn(name, fn) if "inductor" in self.mode else fn
        if "graphs" not in self.mode:
            if (name, *key) not in self._compiled_shapes:  # compiles on this first call
                self._compiled_shapes.add((name, *key))
                self.captured += 1
            return step(*inputs)
        graph = self._graphs.get((name, *key))
        if graph is None:
            graph = self._capture(step, inputs)
            self._graphs[(name, *key)] = graph
            self.captured += 1
        for static, value in zip(graph.inputs, inputs, strict=True):
            static.copy_(value)
        graph.graph.replay()
        return graph.outputs

    def _compiled_fn(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        compiled = self._compiled.get(name)
        if compiled is None:
            compiled = cast(Callable[..., Any], torch.compile(fn, dynamic=False))
            self._compiled[name] = compiled
        return compiled

    def _capture(self, fn: Callable[..., Any], inputs: Sequence[torch.Tensor]) -> _Graph:
        static = [x.clone() for x in inputs]
        side = torch.cuda.Stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            for _ in range(2):  # kernels chosen, compiled code built, before capture
                fn(*static)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = fn(*static)
        return _Graph(graph, static, outputs)
