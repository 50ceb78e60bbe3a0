"""Devices: how `parley up` spreads workers over the GPUs it counts (without CUDA), and the
check a worker makes of its device. In real workers: tests/integration/test_worker_devices.py."""

from __future__ import annotations

import pytest

from parley.cli import build_parser
from shared.devices import check_device, count_visible_gpus, worker_devices
from shared.errors import DeviceUnavailable

UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-1111-2222-333333333333" for i in range(4)]


def smi(gpus: int) -> str:
    """``nvidia-smi -L`` as it prints ``gpus`` H200s."""
    return "".join(f"GPU {i}: NVIDIA H200 (UUID: {UUIDS[i]})\n" for i in range(gpus))


@pytest.mark.parametrize("gpus", [0, 1, 4])
def test_nvidia_smi_lines_are_the_gpus_when_cuda_visible_devices_is_unset(gpus: int) -> None:
    assert count_visible_gpus(cuda_visible_devices=None, nvidia_smi_listing=smi(gpus)) == gpus


def test_no_nvidia_smi_and_nothing_set_is_no_gpu() -> None:
    assert count_visible_gpus(cuda_visible_devices=None, nvidia_smi_listing=None) == 0


def test_mig_lines_are_not_counted_as_gpus() -> None:
    listing = smi(1) + "  MIG 3g.71gb     Device  0: (UUID: MIG-abcd)\n"
    assert count_visible_gpus(cuda_visible_devices=None, nvidia_smi_listing=listing) == 1


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        ("0,2", 2),  # a subset of the host's 4
        ("3", 1),
        (" 1 , 2 ", 2),
        ("", 0),  # set but empty: CUDA sees nothing
        ("-1", 0),
        ("0,-1,2", 1),  # an invalid entry hides every later one
        ("0,7,1", 1),  # past the host's GPUs, likewise
        ("0,0", 1),  # a GPU named twice is one GPU
        ("GPU-1111,GPU-3333", 2),  # UUID prefixes
        ("GPU-9999", 0),  # no such GPU
        ("MIG-abcd", 1),  # MIG instances are not in the GPU lines: trusted
    ],
)
def test_cuda_visible_devices_decides_what_the_workers_see(visible: str, expected: int) -> None:
    got = count_visible_gpus(cuda_visible_devices=visible, nvidia_smi_listing=smi(4))
    assert got == expected


def test_cuda_visible_devices_is_taken_on_trust_without_nvidia_smi() -> None:
    assert count_visible_gpus(cuda_visible_devices="4,5,6", nvidia_smi_listing=None) == 3
    assert count_visible_gpus(cuda_visible_devices="0,x,1", nvidia_smi_listing=None) == 1


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_workers_go_round_robin_over_the_gpus(device: str) -> None:
    assert worker_devices(device, workers=6, gpus=4) == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
        "cuda:0",
        "cuda:1",
    ]
    assert worker_devices(device, workers=3, gpus=1) == ["cuda:0"] * 3


def test_without_a_gpu_the_workers_choose_for_themselves() -> None:
    assert worker_devices("auto", workers=2, gpus=0) == ["auto", "auto"]
    assert worker_devices("cuda", workers=2, gpus=0) == ["cuda", "cuda"]  # fails in the worker


@pytest.mark.parametrize("device", ["cpu", "cuda:2"])
def test_an_explicit_device_is_every_workers(device: str) -> None:
    assert worker_devices(device, workers=3, gpus=4) == [device] * 3


def test_worker_devices_of_no_workers_is_empty() -> None:
    assert worker_devices("auto", workers=0, gpus=4) == []


@pytest.mark.parametrize(
    ("device", "cuda_count", "resolved"),
    [
        ("auto", 0, "cpu"),
        ("auto", 2, "cuda:0"),
        ("cpu", 2, "cpu"),
        ("cuda", 1, "cuda:0"),
        ("cuda:1", 2, "cuda:1"),
        ("cuda:01", 2, "cuda:1"),
    ],
)
def test_a_device_the_worker_sees_resolves(device: str, cuda_count: int, resolved: str) -> None:
    assert check_device(device, cuda_count=cuda_count) == resolved


@pytest.mark.parametrize(
    ("device", "cuda_count", "says"),
    [
        ("cuda:2", 2, "sees 2 CUDA device(s), cuda:0 to cuda:1"),
        ("cuda:0", 0, "no CUDA device is visible"),
        ("cuda", 0, "no CUDA device is visible"),
        ("gpu", 4, "unknown device 'gpu'"),
        ("cuda:-1", 4, "unknown device"),
    ],
)
def test_a_device_the_worker_does_not_see_is_refused_clearly(
    device: str, cuda_count: int, says: str
) -> None:
    with pytest.raises(DeviceUnavailable) as caught:
        check_device(device, cuda_count=cuda_count)
    assert says in caught.value.message


def test_parley_worker_takes_a_device_and_refuses_a_bad_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert build_parser().parse_args(["worker", "--device", "cuda:3"]).device == "cuda:3"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--device", "gpu0"])
    assert "expected auto, cpu, cuda or cuda:K" in capsys.readouterr().err
