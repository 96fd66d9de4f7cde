"""Where a model runs: one reading of the ``device`` setting for training, evaluation and the codec."""
from __future__ import annotations

import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"`` (CUDA when torch sees one, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> a device.

    Asking for CUDA where torch sees none is an error in one sentence, not a silent CPU run."""
    spec = (spec or "auto").strip()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was asked for but torch sees no CUDA device.")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ValueError(f"Unknown device {spec!r}; use auto, cpu, cuda or cuda:N.") from None
