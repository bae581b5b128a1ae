"""The world model (forward dynamics): a U-Net that predicts o[t+1] from o[t-1], o[t] and
the quantised latent action, which it receives twice: tiled over the input image and at the
1x1 bottleneck (as in LAPO)."""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn


class ResidualLayer(nn.Module):
    """x + conv(relu(conv(relu(x)))) with a bottleneck of half the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 2, 1)
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C, H, W)
        return x + self.block(x)


class Down(nn.Module):
    """conv -> batch norm -> residual -> 2x2 max-pool -> ReLU: halves H and W."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            ResidualLayer(c_out),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, c_in, H, W) -> (B, c_out, H/2, W/2)
        return self.net(x)


class Up(nn.Module):
    """2x2 transposed conv -> batch norm -> residual -> ReLU: doubles H and W."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, 2, stride=2),
            nn.BatchNorm2d(c_out),
            ResidualLayer(c_out),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, c_in, H, W) -> (B, c_out, 2H, 2W)
        return self.net(x)


class WorldModel(nn.Module):
    """U-Net forward dynamics model.

    ``forward(context, action)``: context ``(B, T, 3, 64, 64)`` float in [-0.5, 0.5] (T past
    frames, 2 in LAPO), action ``(B, A)`` -> predicted next frame ``(B, 3, 64, 64)`` in
    [-0.5, 0.5] (``tanh(x) / 2``). Five down-sampling blocks and a 2x2 convolution take
    64x64 to 1x1 with channels ``base * (1, 2, 4, 8, 16, 32)``.
    """

    def __init__(
        self, action_dim: int, context_frames: int = 2, base: int = 24, image_size: int = 64
    ) -> None:
        super().__init__()
        if image_size != 64:
            raise ValueError("the world model's U-Net is built for 64x64 frames")
        c_in = 3 * context_frames
        b = base
        downs = (c_in + action_dim, b, 2 * b, 4 * b, 8 * b, 16 * b, 32 * b)
        self.down = nn.ModuleList(Down(downs[i], downs[i + 1]) for i in range(5))
        self.bottom = nn.Conv2d(downs[5], downs[6], 2)  # 2x2 -> 1x1
        ups = (32 * b, 16 * b, 8 * b, 4 * b, 2 * b, b, b)
        # the first up-block sees the bottleneck and the latent action again (in place of the
        # bottleneck skip); later ones see the matching down-block's output
        skips = (action_dim, *downs[5:0:-1])
        self.up = nn.ModuleList(Up(ups[i] + skips[i], ups[i + 1]) for i in range(6))
        self.head = nn.Sequential(
            nn.Conv2d(b + c_in, b, 3, padding=1),
            ResidualLayer(b),
            nn.ReLU(),
            nn.Conv2d(b, 3, 1),
        )

    def forward(self, context: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        B, T, C, H, W = context.shape
        state = rearrange(context, "b t c h w -> b (t c) h w")  # (B, 3T, 64, 64)
        x = torch.cat([state, repeat(action, "b a -> b a h w", h=H, w=W)], 1)
        skips = []
        for block in self.down:
            x = block(x)  # ... -> (B, 16b, 2, 2)
            skips.append(x)
        x = self.bottom(x)  # (B, 32b, 1, 1)
        skips.append(action[:, :, None, None])  # (B, A, 1, 1)
        for i, block in enumerate(self.up):
            x = block(torch.cat([x, skips[-1 - i]], 1))  # ... -> (B, b, 64, 64)
        return torch.tanh(self.head(torch.cat([x, state], 1))) / 2  # (B, 3, 64, 64)
