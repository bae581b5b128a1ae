"""The global shift between consecutive frames, and frame differences measured against it.

Procgen's camera follows the agent (``center_agent=True``) and starpilot's background scrolls,
so between two frames most pixels move by one common offset. :func:`global_shift` estimates
that offset by phase correlation (Kuglin & Hines 1975): the normalised cross-power spectrum of
two images is a pure phase ramp whose inverse FFT peaks at their relative shift. At 64x64 it is
two FFTs per pair, batched. :func:`compensated_difference` then measures "what changed" as
``o[t+1] - shift(o[t])``: what moved against the camera, not the camera itself
(../shared/LATENT_ACTION_RESEARCH.md, "What the games' own code says").
"""

from __future__ import annotations

import torch


def global_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The integer shift ``(dy, dx)`` that best maps ``a`` onto ``b``: frames ``(B, C, H, W)``
    (any scale; compared in greyscale, the channel mean) -> ``(B, 2)`` int64 in
    ``[-H/2, H/2) x [-W/2, W/2)``, such that ``b ~ torch.roll(a, (dy, dx), dims=(-2, -1))``.

    Exact for a circular shift (``torch.roll``); for a camera that moves, the new strip at the
    edge is noise the peak survives. Computed in float32 without autocast (no half FFTs)."""
    with torch.autocast(a.device.type, enabled=False):
        ga = a.float().mean(1)  # (B, H, W) greyscale
        gb = b.float().mean(1)
        ga = ga - ga.mean((-2, -1), keepdim=True)  # no DC term: flat frames give no peak
        gb = gb - gb.mean((-2, -1), keepdim=True)
        cross = torch.fft.fft2(gb) * torch.fft.fft2(ga).conj()  # (B, H, W) complex
        corr = torch.fft.ifft2(cross / (cross.abs() + 1e-8)).real  # (B, H, W), peak at the shift
    B, H, W = corr.shape
    peak = corr.flatten(1).argmax(1)  # (B,)
    dy, dx = peak // W, peak % W
    dy = torch.where(dy >= (H + 1) // 2, dy - H, dy)  # wrap to signed offsets
    dx = torch.where(dx >= (W + 1) // 2, dx - W, dx)
    return torch.stack([dy, dx], 1)  # (B, 2)


def roll_each(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``torch.roll`` of each image by its own shift: ``x (B, C, H, W)``, ``shifts (B, 2)`` int
    ``(dy, dx)`` -> ``(B, C, H, W)``, ``out[b] = torch.roll(x[b], shifts[b], dims=(-2, -1))``.
    What rolls out at one edge comes back at the other (a frame's new strip counts as changed)."""
    B, C, H, W = x.shape
    iy = (torch.arange(H, device=x.device) - shifts[:, :1]) % H  # (B, H) source rows
    ix = (torch.arange(W, device=x.device) - shifts[:, 1:]) % W  # (B, W) source columns
    rows = x.gather(2, iy[:, None, :, None].expand(B, C, H, W))
    return rows.gather(3, ix[:, None, None, :].expand(B, C, H, W))


def compensated_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``b - shift(a)`` for frames ``(B, C, H, W)``, the shift :func:`global_shift`'s
    (estimated without gradient): the change that is not the whole frame moving."""
    with torch.no_grad():
        shifts = global_shift(a, b)  # (B, 2)
    return b - roll_each(a, shifts)  # (B, C, H, W)
