"""Small helpers around Hugging Face libraries shared by the engine modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
