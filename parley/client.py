"""A small HTTP client of a running Parley server, for ``parley say`` and ``parley render``.
Every failure is a :class:`ClientError` with one line that names it (the server's error code
and message when it sent one)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import httpx

FINISHED = {"succeeded", "failed", "cancelled"}
RETRIES_429 = 5


class ClientError(Exception):
    """An error for the person at the terminal: ``str()`` is the whole message."""


class ParleyClient:
    def __init__(self, url: str, api_key: str | None, *, timeout: float = 30) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; a 429 is waited out (its ``Retry-After``) a few times, any other 4xx or
        5xx is a ClientError naming the server's error."""
        for attempt in range(RETRIES_429 + 1):
            try:
                r = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise ClientError(f"cannot reach Parley at {self.url}: {exc}") from exc
            if r.status_code == 429 and attempt < RETRIES_429:
                time.sleep(min(60.0, float(r.headers.get("retry-after", "1") or 1)))
                continue
            if r.status_code >= 400:
                raise ClientError(f"{method} {path}: {describe(r)}")
            return r
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def create_conversation(
        self, *, context_turns: int | None = None, voices: dict[int, str] | None = None
    ) -> str:
        """A new conversation, its speakers bound to ``voices`` (checked before it is made)."""
        body: dict[str, Any] = {"metadata": {"source": "parley cli"}}
        if context_turns is not None:
            body["max_context_turns"] = context_turns
        if voices:
            body["speakers"] = {str(k): v for k, v in voices.items()}
        return str(self.json("POST", "/v1/conversations", json=body)["id"])

    def say(self, cid: str, speaker: int, text: str, params: dict[str, Any]) -> dict[str, Any]:
        body = {"speaker": speaker, "text": text, "params": params}
        return dict(self.json("POST", f"/v1/conversations/{cid}/turns", json=body))

    def wait(
        self, job_id: str, *, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Poll the job until it has finished; ClientError unless it succeeded."""
        while True:
            job = dict(self.json("GET", f"/v1/jobs/{job_id}"))
            if on_progress is not None:
                on_progress(job)
            if job["status"] in FINISHED:
                break
            time.sleep(0.1)
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            reason = f": {error.get('code')}: {error.get('message')}" if error else ""
            raise ClientError(f"turn {job['turn_id']} {job['status']}{reason}")
        return job

    def delete_conversation(self, cid: str) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self._http.delete(f"/v1/conversations/{cid}", timeout=5)

    def cancel(self, job_id: str) -> None:
        with contextlib.suppress(httpx.HTTPError):  # leaving anyway; the server may be down
            self._http.delete(f"/v1/jobs/{job_id}", timeout=5)

    def audio(self, cid: str, tid: str, fmt: str) -> bytes:
        path = f"/v1/conversations/{cid}/turns/{tid}/audio"
        return self.request("GET", path, params={"format": fmt}).content


def describe(r: httpx.Response) -> str:
    """``401 unauthorized: unknown API key`` from a Parley error body, or the status and text."""
    try:
        error = r.json()["error"]
        return f"{r.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"{r.status_code} {r.reason_phrase}: {r.text[:200]}"
