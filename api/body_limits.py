"""Every limit on a request body, and the one rule that checks them.

The limits, from the settings (or fixed here):

- any request: ``max_request_bytes`` (``request_too_large``), enforced by the middleware
  (``api.middleware.request_size``) before any route reads the body;
- a generated turn's JSON: :data:`MAX_JSON_BYTES` (``payload_too_large``);
- an audio upload: ``max_upload_bytes`` of audio (``upload_too_large``); its request may declare
  :data:`~shared.settings.MULTIPART_OVERHEAD_BYTES` more for the multipart framing.

The rule: a declared ``Content-Length`` over the limit (plus its framing) is refused at once,
unread; otherwise the body is read no further than one byte past the limit, and refused then.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import PayloadTooLarge
from shared.settings import MULTIPART_OVERHEAD_BYTES, Settings

MAX_JSON_BYTES = 64 * 1024


@dataclass(frozen=True)
class BodyLimit:
    """At most ``max_bytes`` of ``what``; refused with ``code``, naming ``setting`` if any."""

    max_bytes: int
    code: str
    what: str = "request body"
    setting: str | None = None
    framing: int = 0  # what a declared length may hold besides the limited content

    def declared_over(self, declared: str | None) -> bool:
        """Whether a declared ``Content-Length`` already says the body is too large."""
        if not declared or not declared.isdigit():
            return False
        return int(declared) > self.max_bytes + self.framing

    def over(self, n_bytes: int) -> bool:
        return n_bytes > self.max_bytes

    def message(self, text: str) -> str:
        return f"{text} ({self.setting})" if self.setting else text

    def declared_message(self, declared: str) -> str:
        return self.message(f"{self.what} is {declared} bytes; the limit is {self.max_bytes}")

    def refuse(self, message: str) -> PayloadTooLarge:
        """The error for a body over the limit; ``message`` as :meth:`message` makes it."""
        return PayloadTooLarge(message, code=self.code)


def request_limit(settings: Settings) -> BodyLimit:
    """Any request's body."""
    return BodyLimit(settings.request_bytes_limit, "request_too_large", setting="max_request_bytes")


def json_turn_limit() -> BodyLimit:
    """A generated turn's JSON body."""
    return BodyLimit(MAX_JSON_BYTES, "payload_too_large")


def upload_limit(settings: Settings) -> BodyLimit:
    """An uploaded audio file (a provided turn, a voice's reference clip)."""
    return BodyLimit(
        settings.max_upload_bytes,
        "upload_too_large",
        what="upload",
        setting="max_upload_bytes",
        framing=MULTIPART_OVERHEAD_BYTES,
    )
