"""Small helpers around Hugging Face libraries shared by the engine modules."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from transformers.utils import logging as hf_logging


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' tqdm bars (weight loading/saving) for the duration of the block."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def config_int(value: object, name: str) -> int:
    """``value`` (a model config field) as an int; ValueError when it is not a single integer."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"model config {name} is {value!r}, expected a single integer")
    return value


def cache_keyword(forward: Callable[..., Any]) -> str:
    """The name under which ``forward`` takes its KV cache.

    transformers 5.24 renamed the layers' and models' ``past_key_values`` argument to ``cache``
    (the old name warns, and goes in 5.40); the GPU machines run 5.17, which knows only the old
    one. The signature says which this installation has.
    """
    params = inspect.signature(forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise TypeError(f"{forward.__qualname__} takes no KV cache argument")
