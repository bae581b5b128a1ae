"""What every training loop does before its first step: the run folder and torch's device."""

from __future__ import annotations

from pathlib import Path

import torch

from lapo.checkpoint import remove_stale_temporaries


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def start_run(out: Path, threads: int = 0, device: str = "auto") -> tuple[Path, torch.device]:
    """Create the run folder ``out``, clear temporaries a killed run left in it, set torch's
    CPU threads (0 = leave the default) and return ``(out, device)``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    if threads > 0:
        torch.set_num_threads(threads)
    return out, resolve_device(device)
