"""A worker's heartbeat: the record a worker writes to Redis once a period, and every reader
(recovery, /readyz, /metrics, the container healthcheck) reads back.

A field that is None was not written: such a record is stored without the key, and readers
keep their own default for it (a record from an older worker, or a test's partial one). Keys
this class does not name are kept in ``extra``, so a record reads back as it was written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class WorkerBeat:
    """What a live worker says about itself.

    Attributes:
        name: The worker's name (``parley-<id>@<host>``).
        model: The model it serves, as jobs name it.
        test_model: Whether that model has random weights (tests).
        device: The torch device it runs on.
        pid: Its process id.
        max_batch: Turns its frame loop can hold.
        compile: Its compile mode.
        jobs: The jobs it holds now (announced before they run); None: it does not say.
        consuming: Whether its broker consumer takes turns.
        batch_rows: Turns in its frame loop now.
        engine_busy_s: Seconds its engine was busy, by stage.
    """

    name: str | None = None
    model: str | None = None
    test_model: bool | None = None
    device: str | None = None
    pid: int | None = None
    max_batch: int | None = None
    compile: str | None = None
    jobs: list[str] | None = None
    consuming: bool | None = None
    batch_rows: int | None = None
    engine_busy_s: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name, as readers compare it (``"None"`` for a record without one)."""
        return str(self.name)

    @property
    def held(self) -> set[str]:
        """The jobs it holds (empty when it does not say)."""
        return {str(j) for j in self.jobs or ()}

    def to_dict(self) -> dict[str, Any]:
        found = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **{k: v for k, v in found.items() if v is not None}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WorkerBeat:
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in raw.items() if k in names},
            extra={k: v for k, v in raw.items() if k not in names},
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> WorkerBeat:
        return cls.from_dict(json.loads(raw))
