"""The networks' input scale: uint8 frames as float in [-0.5, 0.5] (the paper's), and the
smaller inputs a cheaper network may see (half the resolution, grey)."""

from __future__ import annotations

import torch
from einops import rearrange

# ITU-R BT.601 luma weights; they sum to 1, so a grey frame keeps the [0, 1] range
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def frames_to_float(obs: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``(*, H, W, C)`` -> float ``(*, C, H, W)`` in [-0.5, 0.5]: single frames
    ``(B, 64, 64, 3) -> (B, 3, 64, 64)``, windows ``(B, T, 64, 64, 3) -> (B, T, 3, 64, 64)``."""
    return obs.movedim(-1, -3).float().div_(255.0).sub_(0.5)


def frames_to_input(obs: torch.Tensor, size: int = 64, grey: bool = False) -> torch.Tensor:
    """uint8 frames ``(*, 64, 64, 3)`` -> float ``(*, C, size, size)`` in [-0.5, 0.5], ``C`` 1
    when ``grey`` (luma) else 3; ``size`` 64 (as recorded) or 32 (the mean of each 2x2 block).

    At 64 and in colour this is :func:`frames_to_float`. The 2x2 sums are taken in int16 (four
    uint8 are at most 1020): exact, and only a quarter of the values go to float. Rows are
    paired first, as whole contiguous rows; a PPO update calls this on every minibatch.
    """
    if size == 64 and not grey:
        return frames_to_float(obs)
    if size not in (32, 64):
        raise ValueError(f"frames are 64x64: size must be 64 or 32, got {size}")
    x, top = obs, 255.0
    if size == 32:
        rows = rearrange(obs, "... (h i) w c -> ... h i (w c)", i=2)  # (*, 32, 2, 64 * 3)
        x = rows[..., 0, :].to(torch.int16) + rows[..., 1, :]  # (*, 32, 192)
        cols = rearrange(x, "... h (w j c) -> ... h w j c", j=2, c=3)  # (*, 32, 32, 2, 3)
        x = cols[..., 0, :] + cols[..., 1, :]  # (*, 32, 32, 3)
        top = 4 * 255.0
    x = x.float()
    if grey:
        weights = torch.tensor(GREY_WEIGHTS, device=x.device) / top
        x = (x @ weights).unsqueeze(-1)  # (*, size, size, 1)
    else:
        x = x.div_(top)
    return x.sub_(0.5).movedim(-1, -3)
