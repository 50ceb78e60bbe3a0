"""Log lines that say which request or job they belong to, as text or as JSON.

The ids live in context variables: the API sets ``request_id`` for each request (so every line
logged while handling it carries the id, in the event loop and in the threads its sync routes run
in), a worker sets ``job_id`` and ``conversation_id`` while it runs a job (each Celery pool thread
has its own context). :func:`configure_logging` installs one root handler whose filter copies the
ids that are set onto each record: JSON lines get them as fields, text lines as ``[k=v …]``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

from shared.settings import Settings

request_id: ContextVar[str | None] = ContextVar("parley_request_id", default=None)
job_id: ContextVar[str | None] = ContextVar("parley_job_id", default=None)
conversation_id: ContextVar[str | None] = ContextVar("parley_conversation_id", default=None)

CONTEXT_FIELDS: tuple[ContextVar[str | None], ...] = (request_id, job_id, conversation_id)
FIELD_NAMES = ("request_id", "job_id", "conversation_id")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
JSON_FIELDS = ("asctime", "levelname", "name", "process", "threadName", "message")


@contextmanager
def job_context(job: str, conversation: str | None) -> Iterator[None]:
    """Log lines in this block carry ``job_id`` (and ``conversation_id`` when known)."""
    job_token = job_id.set(job)
    conversation_token = conversation_id.set(conversation)
    try:
        yield
    finally:
        conversation_id.reset(conversation_token)
        job_id.reset(job_token)


class ContextFilter(logging.Filter):
    """Copies the ids set in the current context onto the record (absent ones stay absent)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in zip(FIELD_NAMES, CONTEXT_FIELDS, strict=True):
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """The plain format, with ``[request_id=… job_id=…]`` after the message when set."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [f"{n}={getattr(record, n)}" for n in FIELD_NAMES if hasattr(record, n)]
        return f"{line} [{' '.join(ids)}]" if ids else line


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(
            list(JSON_FIELDS),
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    return TextFormatter(TEXT_FORMAT)


def configure_logging(settings: Settings) -> None:
    """One stderr handler on the root logger, in ``settings.log_format``, at ``log_level``.

    Every log line goes to stderr; stdout is left to what third parties print (Celery's banner,
    shown in text mode only, and its shutdown notice)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(make_formatter(settings.log_format))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)  # warnings become log lines too (JSON ones in json mode)
