"""Devices in real workers: /readyz names each live worker's device, a device the worker
cannot see is refused, and ``parley worker --device`` wins over PARLEY_DEVICE."""

from __future__ import annotations

from collections.abc import Callable

from tests.stack import Stack


def test_readyz_names_each_live_workers_device(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("sqlite", workers=0)
    stack.start_worker(PARLEY_DEVICE="auto")
    proc = stack.start_worker(wait=False, PARLEY_DEVICE="cuda:1")  # no GPU here: refused
    assert proc.wait(timeout=120) == 2
    assert "worker cannot start: device 'cuda:1' was asked for" in stack.worker_logs(tail=None)
    ready = stack.client.get("/readyz").json()
    assert ready["ready"] and ready["checks"]["workers"] == "1 live"
    assert [w["device"] for w in ready["workers"]] == ["cpu"]  # auto, on a host with no GPU


def test_parley_worker_device_flag_reaches_readyz(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack("sqlite", workers=0)
    stack.start_worker(args=("--device", "cpu"), PARLEY_DEVICE="cuda:5")
    workers = stack.client.get("/readyz").json()["workers"]
    assert [w["device"] for w in workers] == ["cpu"]  # the flag wins over PARLEY_DEVICE
