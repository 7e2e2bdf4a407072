"""Device choice: ``"auto"`` means CUDA when present, else CPU."""
from __future__ import annotations

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
