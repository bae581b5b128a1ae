"""Image encoders: the IMPALA-CNN (Espeholt et al. 2018) used by Procgen's baselines and LAPO,
and the smaller Nature-DQN CNN (Mnih et al. 2015), about 5x cheaper on a CPU, with a half-width
variant for cheap PPO demonstrators."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lapo.config import ENCODERS


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C, H, W)
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ConvSequence(nn.Module):
    """conv 3x3 -> max-pool 3x3 stride 2 -> two residual blocks; halves H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.res0 = ResidualBlock(out_channels)
        self.res1 = ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2))
        x = F.max_pool2d(self.conv(x), kernel_size=3, stride=2, padding=1)
        return self.res1(self.res0(x))


class ImpalaCNN(nn.Module):
    """IMPALA-CNN: stacks of (16, 32, 32) x ``width`` channels, then a linear layer.

    Input ``(B, in_channels, 64, 64)`` float; output ``(B, out_features)`` after ReLU, or
    with ``final_relu=False`` the linear layer's output itself.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 1,
        out_features: int = 256,
        image_size: int = 64,
        channels: tuple[int, ...] = (16, 32, 32),
        final_relu: bool = True,
    ) -> None:
        super().__init__()
        self.final_relu = final_relu
        stacks = []
        c = in_channels
        size = image_size
        for ch in channels:
            stacks.append(ConvSequence(c, ch * width))
            c = ch * width
            size = (size + 1) // 2
        self.stacks = nn.Sequential(*stacks)
        self.fc = nn.Linear(c * size * size, out_features)
        self.out_features = out_features

    @property
    def trunk(self) -> nn.Sequential:
        """The convolutional part, before the linear layer ``fc`` (a ReLU comes between)."""
        return self.stacks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, 64, 64) -> (B, 32w, 8, 8) -> (B, out_features); channels-last in memory
        # (the same values): oneDNN's convolutions run 1.5-2x faster on a CPU that way
        x = self.stacks(x.contiguous(memory_format=torch.channels_last))
        y = self.fc(F.relu(x).flatten(1))
        return F.relu(y) if self.final_relu else y


class NatureCNN(nn.Module):
    """Nature-DQN encoder: three convolutions and a linear layer.

    Input ``(B, in_channels, S, S)`` float with ``S`` 64 or 32; output ``(B, out_features)``
    after ReLU. The first convolution's kernel and stride scale with the image (8 and 4 at 64,
    4 and 2 at 32), so both sizes reach the same 15x15 map; ``channels`` are the three
    convolutions' (Nature's 32, 64, 64).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_features: int = 512,
        image_size: int = 64,
        channels: tuple[int, int, int] = (32, 64, 64),
    ) -> None:
        super().__init__()
        if image_size not in (32, 64):
            raise ValueError(f"the Nature CNN takes 64x64 or 32x32 images, not {image_size}")
        k = image_size // 8
        c0, c1, c2 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, c0, k, stride=k // 2),
            nn.ReLU(),
            nn.Conv2d(c0, c1, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, stride=1),
            nn.ReLU(),
        )
        with torch.no_grad():
            n = self.convs(torch.zeros(1, in_channels, image_size, image_size)).numel()
        self.fc = nn.Linear(n, out_features)
        self.out_features = out_features

    @property
    def trunk(self) -> nn.Sequential:
        """The convolutional part, before the linear layer ``fc`` (it ends in a ReLU)."""
        return self.convs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, S, S) -> (B, c0, 15, 15) -> (B, c2, 4, 4) -> (B, out_features)
        x = self.convs(x.contiguous(memory_format=torch.channels_last))  # as ImpalaCNN's
        return F.relu(self.fc(x.flatten(1)))


def make_encoder(
    arch: str, in_channels: int = 3, width: int = 1, image_size: int = 64
) -> nn.Module:
    """Build an encoder by name for ``(B, in_channels, image_size, image_size)`` inputs:
    ``impala`` (with ``width``), ``nature``, or ``nature_small`` (the Nature CNN at half its
    channels, 16, 32, 32, and a 256-wide linear layer: a third of its multiply-adds at
    64x64, a fifth at 32x32)."""
    if arch == "impala":
        return ImpalaCNN(in_channels=in_channels, width=width, image_size=image_size)
    if arch == "nature":
        return NatureCNN(in_channels=in_channels, image_size=image_size)
    if arch == "nature_small":
        return NatureCNN(
            in_channels, out_features=256, image_size=image_size, channels=(16, 32, 32)
        )
    raise ValueError(f"unknown encoder {arch!r}: choose {', '.join(ENCODERS)}")
