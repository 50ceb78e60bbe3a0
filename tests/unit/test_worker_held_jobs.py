"""The jobs a worker holds (``worker.runtime.HeldJobs``): counted per holder, announced on
each change."""

from __future__ import annotations

from worker.runtime import HeldJobs


def test_held_jobs_count_their_holders() -> None:
    held = HeldJobs()
    announced: list[list[str]] = []
    held.on_change = lambda: announced.append(held.snapshot())
    held.add("a")
    held.add("a")  # a duplicate message's task
    held.add("b")
    assert announced == [["a"], ["a"], ["a", "b"]]
    held.discard("a")
    assert held.snapshot() == ["a", "b"]  # still held by the task that runs it
    held.discard("a")
    held.discard("b")
    assert held.snapshot() == []
