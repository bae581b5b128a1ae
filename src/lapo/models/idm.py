"""The latent inverse dynamics model: o[t-1], o[t], o[t+1] -> latent action z[t]."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from lapo.models.impala import ImpalaCNN
from lapo.models.quantizers import QuantizerConfig, QuantizerOutput, make_quantizer


class IDM(nn.Module):
    """IMPALA-CNN over frames stacked on the channel axis, a linear head to the latent action,
    and the quantiser.

    ``forward(frames)``: ``(B, T, 3, 64, 64)`` float in [-0.5, 0.5] (T = 3 in LAPO) ->
    ``(z (B, A) continuous, QuantizerOutput with z_q (B, A))``.
    """

    def __init__(
        self, quantizer: QuantizerConfig, frames: int = 3, width: int = 4, features: int = 256
    ) -> None:
        super().__init__()
        self.encoder = ImpalaCNN(in_channels=3 * frames, width=width, out_features=features)
        self.head = nn.Linear(features, quantizer.latent_dim)
        self.quantizer = make_quantizer(quantizer)
        self.latent_dim = quantizer.latent_dim

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
        x = rearrange(frames, "b t c h w -> b (t c) h w")  # (B, 3T, 64, 64)
        z = self.head(self.encoder(x))  # (B, A)
        return z, self.quantizer(z)
