"""A worker's threads carry OS names (``worker.thread_names``), and ``bench.thread_cpu`` splits
a process's CPU by them."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from bench import service_concurrency, thread_cpu
from worker.thread_names import name_os_threads, os_thread_name


@pytest.fixture
def named_threads() -> Iterator[None]:
    name_os_threads()
    yield
    threading.setprofile(None)  # type: ignore[arg-type]


def test_os_names_fit_linux_and_keep_what_tells_threads_apart() -> None:
    assert os_thread_name("parley-frames") == "parley-frames"
    assert os_thread_name("ThreadPoolExecutor-0_12") == "pool-0_12"
    assert os_thread_name("parley-heartbeat") == "parley-heartbea"  # 15 bytes


def spin_then_wait(seconds: float, spun: threading.Event, leave: threading.Event) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    spun.set()
    leave.wait()


def start_named(names: list[str], seconds: float, leave: threading.Event) -> list[threading.Thread]:
    """Threads that each burn ``seconds`` of CPU, then wait for ``leave``; returned once all have
    burnt theirs."""
    spun = [threading.Event() for _ in names]
    threads = [
        threading.Thread(target=spin_then_wait, args=(seconds, done, leave), name=name)
        for name, done in zip(names, spun, strict=True)
    ]
    for t in threads:
        t.start()
    for done in spun:
        assert done.wait(10)
    return threads


def test_a_live_threads_cpu_lands_in_its_part_by_name(named_threads: None) -> None:
    before = thread_cpu.read(os.getpid())
    leave = threading.Event()
    threads = start_named(["parley-frames", "ThreadPoolExecutor-0_0"], 0.2, leave)
    after = thread_cpu.read(os.getpid())
    leave.set()
    for t in threads:
        t.join()
    assert before is not None and after is not None
    assert {"parley-frames", "pool-0_0"} <= {comm for comm, _ in after.threads.values()}
    split = thread_cpu.split(before, after)
    assert split["frame_loop"] >= 0.15 and split["task_threads"] >= 0.15
    assert split["total"] >= split["frame_loop"] + split["task_threads"] and split["rest"] >= 0


def test_an_ended_threads_cpu_stays_in_the_total_only(named_threads: None) -> None:
    before = thread_cpu.read(os.getpid())
    leave = threading.Event()
    leave.set()
    for t in start_named(["parley-frames"], 0.3, leave):
        t.join()  # returns a moment before the OS thread is gone: wait for that too
    deadline = time.monotonic() + 5
    while (after := thread_cpu.read(os.getpid())) is not None and time.monotonic() < deadline:
        if "parley-frames" not in {comm for comm, _ in after.threads.values()}:
            break
        time.sleep(0.01)
    assert before is not None and after is not None
    split = thread_cpu.split(before, after)
    assert split["total"] >= 0.25 and split["rest"] == split["total"] and split["frame_loop"] == 0


def test_the_loop_split_follows_the_engine_busy_times() -> None:
    split = service_concurrency._split_loop(
        10.0, {"model": 1.0, "decode": 1.0, "loop": 2.0}, {"model": 4.0, "decode": 2.0, "loop": 6.0}
    )
    assert split == pytest.approx({"model": 7.5, "decode": 2.5, "loop_other": 0.0})
    assert service_concurrency._split_loop(5.0, {}, {}) == {}  # no heartbeat figures: no split


def test_the_loop_split_adds_up_even_when_a_reading_counts_more_than_the_loop() -> None:
    # a heartbeat read between the model's share and the loop's total of one iteration
    split = service_concurrency._split_loop(
        2.0, {"model": 1.0, "decode": 0.5, "loop": 2.0}, {"model": 2.0, "decode": 1.0, "loop": 3.0}
    )
    assert split["model"] + split["decode"] + split["loop_other"] == pytest.approx(2.0)
    assert split["model"] == pytest.approx(2.0 * 1.0 / 1.5)
    even = service_concurrency._split_loop(2.0, {}, {"model": 1.0, "decode": 0.5, "loop": 2.0})
    assert (even["model"], even["decode"], even["loop_other"]) == pytest.approx((1.0, 0.5, 0.5))
