"""The latent inverse dynamics model: o[t-1], o[t], o[t+1] -> latent action z[t]."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from einops import rearrange
from torch import nn

from lapo.config import LAMConfig, QuantizerConfig
from lapo.models.frames import frames_to_float
from lapo.models.impala import ImpalaCNN
from lapo.models.motion import compensated_difference
from lapo.models.quantizers import QuantizerOutput, make_quantizer


def stack_frames(
    frames: torch.Tensor,
    differences: bool = False,
    difference_scale: float = 1.0,
    compensate: bool = False,
) -> torch.Tensor:
    """``(B, T, 3, H, W)`` -> ``(B, 3T, H, W)``, or with ``differences``
    ``(B, 3(2T - 1), H, W)``: the frames, then ``difference_scale x (o[i+1] - o[i])`` for each
    consecutive pair; with ``compensate``, ``o[i+1] - shift(o[i])`` against the pair's global
    shift (:func:`lapo.models.motion.compensated_difference`)."""
    if differences:
        if compensate:
            B, T = frames.shape[:2]
            pairs = compensated_difference(
                rearrange(frames[:, :-1], "b t c h w -> (b t) c h w"),
                rearrange(frames[:, 1:], "b t c h w -> (b t) c h w"),
            )  # (B(T-1), 3, H, W)
            diffs = rearrange(pairs, "(b t) c h w -> b t c h w", b=B, t=T - 1)
        else:
            diffs = frames[:, 1:] - frames[:, :-1]
        if difference_scale != 1.0:
            diffs = diffs * difference_scale
        frames = torch.cat([frames, diffs], 1)
    return rearrange(frames, "b t c h w -> b (t c) h w")


class IDM(nn.Module):
    """IMPALA-CNN over frames stacked on the channel axis, a linear head to the latent action,
    and the quantiser.

    ``forward(frames)``: ``(B, T, 3, 64, 64)`` float in [-0.5, 0.5] (T = 3 in LAPO) ->
    ``(z (B, A) continuous, QuantizerOutput with z_q (B, A))``.

    With ``differences`` the encoder also sees the T - 1 frame differences
    ``o[i+1] - o[i]`` stacked after the frames: moving sprites stand out from the first layer.
    They are sparse and small next to the frames; ``difference_scale`` amplifies them. With
    ``compensate`` they are taken against each pair's global shift (the camera's move).
    With ``linear_features`` the encoder's last linear layer goes to the head without its ReLU,
    so no input can switch every feature off at once.
    """

    def __init__(
        self,
        quantizer: QuantizerConfig,
        frames: int = 3,
        width: int = 4,
        features: int = 256,
        differences: bool = False,
        difference_scale: float = 1.0,
        compensate: bool = False,
        linear_features: bool = False,
    ) -> None:
        super().__init__()
        self.differences = differences
        self.difference_scale = difference_scale
        self.compensate = compensate
        images = 2 * frames - 1 if differences else frames
        self.encoder = ImpalaCNN(
            in_channels=3 * images,
            width=width,
            out_features=features,
            final_relu=not linear_features,
        )
        self.head = nn.Linear(features, quantizer.latent_dim)
        self.quantizer = make_quantizer(quantizer)
        self.latent_dim = quantizer.latent_dim

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        z = self.encode(frames)  # (B, A)
        return z, self.quantizer(z)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """The continuous latent ``(B, A)`` of ``(B, T, 3, 64, 64)`` frames, before the
        quantiser (whose codebook statistics it leaves alone)."""
        x = stack_frames(
            frames, self.differences, self.difference_scale, self.compensate
        )  # (B, 3T or 3(2T-1), 64, 64)
        return self.head(self.encoder(x))  # (B, A)


def build_idm(cfg: LAMConfig) -> IDM:
    """The latent IDM of stage-1 configuration ``cfg`` (untrained)."""
    return IDM(
        cfg.quantizer,
        frames=3,
        width=cfg.idm_width,
        differences=cfg.idm_differences,
        difference_scale=cfg.idm_difference_scale,
        compensate=cfg.motion_compensate_idm,
        linear_features=cfg.idm_linear_features,
    )


CPU_BATCH = 64
"""Windows per forward pass of :func:`map_windows` on a CPU: a batch of 512 spills the
caches and runs 1.5-2x slower per window than 32-64 (IMPALA-CNN, 2 cores, measured)."""


@torch.no_grad()
def map_windows(
    fn: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]],
    windows: Iterable[np.ndarray],
    device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """``fn`` on each chunk of uint8 windows ``(b, T, 64, 64, 3)``, given as float frames
    ``(b, T, 3, 64, 64)`` (:func:`frames_to_float`) on ``device``; its outputs ``(b, ...)``
    (a tensor or a tuple) concatenated over the chunks on the CPU, floats as float32. On a
    CPU each chunk goes through ``fn`` :data:`CPU_BATCH` windows at a time."""
    outs: list[list[torch.Tensor]] = []
    for chunk in windows:
        step = CPU_BATCH if device.type == "cpu" else len(chunk)
        for i in range(0, len(chunk), max(step, 1)):
            y = fn(frames_to_float(torch.from_numpy(chunk[i : i + step]).to(device)))
            ys = y if isinstance(y, tuple) else (y,)
            outs = outs or [[] for _ in ys]
            for acc, t in zip(outs, ys, strict=True):
                acc.append((t.float() if t.is_floating_point() else t).cpu())
    return tuple(torch.cat(acc) for acc in outs)


def idm_latents(
    idm: IDM, windows: Iterable[np.ndarray], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The IDM's latents of chunks of uint8 windows ``(b, 3, 64, 64, 3)``, in eval mode (its
    mode is restored after): ``(z (N, A), z_q (N, A))`` float32 on the CPU."""

    def encode(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z, q = idm(frames)
        return z, q.z_q

    was_training = idm.training
    idm.eval()
    try:
        z, z_q = map_windows(encode, windows, device)
    finally:
        idm.train(was_training)
    return z, z_q
