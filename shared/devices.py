"""Devices: what ``PARLEY_DEVICE`` may say, which GPU each worker of ``parley up`` gets, and the
check a worker makes before it loads a model. No torch here.

``parley up`` counts GPUs without touching CUDA (the parent never imports torch): from
``CUDA_VISIBLE_DEVICES`` when it is set, else from ``nvidia-smi -L``. Worker k then gets
``cuda:{k % count}``; ``cpu`` or an explicit ``cuda:K`` is every worker's device. A worker
started by ``parley up`` inherits ``CUDA_VISIBLE_DEVICES``, so ``cuda:K`` is the K-th *visible*
GPU, as CUDA numbers them.
"""

from __future__ import annotations

import re
import subprocess

from shared.errors import DeviceUnavailable

# PARLEY_DEVICE: auto (CUDA when present), cpu, cuda (the first GPU), cuda:K.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
NVIDIA_SMI_TIMEOUT_S = 10.0
_GPU_LINE = re.compile(r"^GPU \d+: .*?(?:\(UUID: (GPU-[0-9a-fA-F-]+)\))?\s*$")


def is_device(value: str) -> bool:
    return DEVICE_PATTERN.fullmatch(value) is not None


def list_gpus() -> str | None:
    """``nvidia-smi -L``'s output (one ``GPU n: name (UUID: …)`` line a GPU), or None when
    nvidia-smi is absent or fails. It lists every GPU of the host, whatever
    ``CUDA_VISIBLE_DEVICES`` says."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _gpu_uuids(listing: str) -> list[str]:
    """The UUID of each ``GPU n:`` line ("" where the line has none). MIG lines are skipped."""
    found = []
    for line in listing.splitlines():
        match = _GPU_LINE.match(line.strip())
        if match:
            found.append(match.group(1) or "")
    return found


def count_visible_gpus(*, cuda_visible_devices: str | None, nvidia_smi_listing: str | None) -> int:
    """How many GPUs a process started here sees.

    Args:
        cuda_visible_devices: ``CUDA_VISIBLE_DEVICES`` (None when unset).
        nvidia_smi_listing: ``nvidia-smi -L``'s output (None when it could not run).

    Without ``CUDA_VISIBLE_DEVICES``, the GPUs nvidia-smi lists. With it, its entries as CUDA
    reads them: indices or ``GPU-``/``MIG-`` UUID prefixes, up to the first that names no new
    device (``-1``, an empty entry, an index past the host's GPUs, an unknown UUID, a GPU named
    twice), which hides it and every later one. Entries are checked against nvidia-smi's list
    when there is one, and taken on trust when there is none.
    """
    uuids = _gpu_uuids(nvidia_smi_listing) if nvidia_smi_listing is not None else None
    if cuda_visible_devices is None:
        return len(uuids or [])
    seen: set[str] = set()
    for raw in cuda_visible_devices.split(","):
        entry = raw.strip()
        if entry.isdigit():
            index = int(entry)
            valid = uuids is None or index < len(uuids)
            key = uuids[index] if uuids and valid and uuids[index] else f"index {index}"
        elif entry.startswith(("GPU-", "MIG-")):
            matches = [u for u in uuids or [] if u.startswith(entry)]
            # MIG instances are not in the GPU lines: trust them, as without a listing.
            valid = uuids is None or entry.startswith("MIG-") or len(matches) == 1
            key = matches[0] if len(matches) == 1 else entry
        else:
            valid = False
            key = entry
        if not valid or key in seen:
            break
        seen.add(key)
    return len(seen)


def worker_devices(device: str, *, workers: int, gpus: int) -> list[str]:
    """The device of each of ``workers`` workers on a host where they see ``gpus`` GPUs.

    ``auto`` and ``cuda`` go round-robin over the GPUs (worker k on ``cuda:{k % gpus}``).
    ``cpu`` and ``cuda:K`` are honoured for every worker. Without a GPU found, ``auto`` and
    ``cuda`` are passed on as they are: the worker decides (``cuda`` then fails there, clearly).
    """
    if device in ("auto", "cuda") and gpus > 0:
        return [f"cuda:{k % gpus}" for k in range(workers)]
    return [device] * workers


def check_device(device: str, *, cuda_count: int) -> str:
    """The device a worker loads its model on (``cpu`` or ``cuda:K``), given how many CUDA
    devices it sees; ``auto`` is the first GPU, or the CPU without one.

    Raises:
        DeviceUnavailable: ``device`` is not a device name, or names a GPU this process does not
            see (CUDA absent, or K past the last visible GPU).
    """
    if not is_device(device):
        raise DeviceUnavailable(
            f"unknown device {device!r} (expected 'auto', 'cpu', 'cuda' or 'cuda:K')"
        )
    if device == "auto":
        return "cuda:0" if cuda_count else "cpu"
    if device == "cpu":
        return device
    index = int(device.partition(":")[2] or 0)
    if cuda_count == 0:
        raise DeviceUnavailable(
            f"device {device!r} was asked for, but no CUDA device is visible to this process "
            "(no GPU, a CPU-only torch, or CUDA_VISIBLE_DEVICES hides them all)"
        )
    if index >= cuda_count:
        raise DeviceUnavailable(
            f"device {device!r} was asked for, but this process sees {cuda_count} CUDA "
            f"device(s), cuda:0 to cuda:{cuda_count - 1} (CUDA_VISIBLE_DEVICES numbers the "
            "GPUs it leaves visible from 0)"
        )
    return f"cuda:{index}"
