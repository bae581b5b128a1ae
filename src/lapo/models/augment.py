"""Image augmentations for stage 1's inverse dynamics model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lapo import distributed


def random_shift(frames: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift every frame by its own random whole-pixel offset in ``[-pad, pad]`` on each axis,
    filling the border by replicating the edge (DrQ's shift, drawn per frame).

    ``frames``: ``(B, T, C, H, W)`` -> ``(B, T, C, H, W)``; offsets come from torch's global RNG,
    drawn for the global batch under torchrun and sliced (one process draws the same).
    """
    if pad <= 0:
        return frames
    B, T, C, H, W = frames.shape
    x = F.pad(frames.reshape(B * T, C, H, W), (pad, pad, pad, pad), mode="replicate")
    dev = frames.device
    draw = lambda n: torch.randint(0, 2 * pad + 1, (2, n * T, 1, 1), device=dev)  # noqa: E731
    dy, dx = distributed.draw_local(draw, B, dim=1)
    rows = (torch.arange(H, device=frames.device).view(1, H, 1) + dy).expand(B * T, H, W)
    cols = (torch.arange(W, device=frames.device).view(1, 1, W) + dx).expand(B * T, H, W)
    flat = rows * (W + 2 * pad) + cols  # (B*T, H, W) index into the padded image
    out = x.flatten(2).gather(2, flat.flatten(1).unsqueeze(1).expand(-1, C, -1))
    return out.view(B, T, C, H, W)
