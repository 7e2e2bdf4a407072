"""Device choice (``"auto"`` means CUDA when present, else CPU) and the host memory a run can use."""
from __future__ import annotations

import os

import torch

from .errors import ArgumentError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a device into a ``torch.device``.

    Raises
    ------
    ArgumentError
        If CUDA is asked for but not available, or the string is not a device.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ArgumentError(f"device {device!r} is not a device; use 'auto', 'cpu' or 'cuda[:N]'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"device {device!r} asked for CUDA, but no CUDA GPU is available; use 'auto' or 'cpu'.")
    return dev


def available_memory() -> int | None:
    """Bytes of host memory a new allocation can use now (``MemAvailable``; else free pages), None if unknown.

    Used to refuse work that cannot fit (a grid of a million points per axis) before it starts,
    with an estimate, instead of dying in a ``MemoryError`` half-way.
    """
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; binary units, three significant digits."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.3g} {unit}"
    return f"{n / 1024:.3g} PiB"
