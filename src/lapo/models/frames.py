"""The networks' input scale: uint8 frames as float in [-0.5, 0.5] (the paper's)."""

from __future__ import annotations

import torch


def frames_to_float(obs: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``(*, H, W, C)`` -> float ``(*, C, H, W)`` in [-0.5, 0.5]: single frames
    ``(B, 64, 64, 3) -> (B, 3, 64, 64)``, windows ``(B, T, 64, 64, 3) -> (B, T, 3, 64, 64)``."""
    return obs.movedim(-1, -3).float().div_(255.0).sub_(0.5)
