"""Typed errors. The API maps each to an HTTP status once, in the app factory."""

from __future__ import annotations


class ParleyError(Exception):
    """Base of every error Parley reports to a caller."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(ParleyError):
    status_code = 422
    code = "invalid_input"


class NotFound(ParleyError):
    status_code = 404
    code = "not_found"


class Unauthorized(ParleyError):
    status_code = 401
    code = "unauthorized"


class Conflict(ParleyError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ParleyError):
    status_code = 413
    code = "payload_too_large"


class TooManyRequests(ParleyError):
    """Too much in flight, or too many requests: the caller may retry after ``retry_after_s``
    (sent as ``Retry-After``)."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = max(1, retry_after_s)


class Unavailable(ParleyError):
    status_code = 503
    code = "unavailable"


class WaitTimeout(ParleyError):
    """A request that answers with a turn waited longer for it than it may."""

    status_code = 504
    code = "timeout"


class EngineError(ParleyError):
    """The speech engine failed on a turn (the job fails; the conversation goes on)."""

    code = "engine_error"


class ModelLoadError(ParleyError):
    """A model could not be loaded: fatal at worker start."""

    code = "model_load_error"


class DeviceUnavailable(ParleyError):
    """The device a worker was given does not exist there: fatal at worker start (a setting to
    fix, not a model to fall back from)."""

    code = "device_unavailable"
