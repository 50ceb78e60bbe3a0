"""Multipart audio uploads, read the same way for provided turns and voices: the size checks
(declared, then read; the limit and its rule: ``api.body_limits``), the file part ``audio``, and
the ``speaker`` field."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request
from starlette.datastructures import FormData, UploadFile

from api.body_limits import BodyLimit
from shared.errors import InvalidInput

SPEAKER_FIELD = re.compile(r"-?[0-9]{1,9}")


@asynccontextmanager
async def audio_form(
    request: Request, *, limit: BodyLimit, missing: str
) -> AsyncIterator[tuple[FormData, bytes]]:
    """The form and the bytes of its ``audio`` file part, at most ``limit`` of them
    (``api.body_limits.upload_limit``); ``missing`` says what needs the part when it is not
    there."""
    declared = request.headers.get("content-length")
    if declared is not None and limit.declared_over(declared):
        raise limit.refuse(limit.declared_message(declared))
    most = limit.max_bytes
    async with request.form(max_files=1, max_fields=8, max_part_size=most + 1) as form:
        upload = form.get("audio")
        if not isinstance(upload, UploadFile):
            sent_as_text = " (one came as a text field: send it with a filename)" if upload else ""
            raise InvalidInput(f"{missing}{sent_as_text}", code="missing_audio")
        data = await upload.read(most + 1)
        if limit.over(len(data)):
            raise limit.refuse(limit.message(f"upload is larger than {most} bytes"))
        yield form, data


def speaker_field(raw: object) -> int:
    """A multipart ``speaker``: ASCII digits only, and few (``int()`` takes "١" but fails on
    "²" and on 4300+ digits)."""
    if not isinstance(raw, str) or not SPEAKER_FIELD.fullmatch(raw.strip()):
        raise InvalidInput(
            "multipart field 'speaker' must be an integer (ASCII digits, at most 9)",
            code="invalid_speaker",
        )
    return int(raw.strip())
