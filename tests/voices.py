"""Posting a named voice (POST /v1/voices) in tests. Used by tests/api/test_voices.py and
tests/integration/test_voices.py."""

from __future__ import annotations

from typing import Any

from tests.stack import Stack

REFERENCE_TEXT = "This is how Anna sounds when she talks."


def post_voice(stack: Stack, name: str, data: bytes, text: str = REFERENCE_TEXT, **kw: Any) -> Any:
    headers = kw.pop("headers", None)
    fields = {"name": name, "text": text, **{k: str(v) for k, v in kw.items()}}
    return stack.client.post(
        "/v1/voices",
        data=fields,
        files={"audio": ("ref.wav", data, "application/octet-stream")},
        headers=headers,
    )
