"""The world model (forward dynamics): a U-Net that predicts o[t+1] from o[t-1], o[t] and
the quantised latent action, which it receives twice: tiled over the input image and at the
1x1 bottleneck (as in LAPO); optionally at every up-block and the output head too."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lapo import distributed
from lapo.models.impala import ImpalaCNN


class BatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics are the global batch's under ``torchrun`` (as
    ``nn.SyncBatchNorm``, which CUDA alone runs): N processes normalise as one process does
    with their batches together. One process: ``nn.BatchNorm2d`` itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, C, H, W)
        if not self.training or distributed.world_size() == 1:
            return super().forward(x)
        return self._global(x)

    @torch.compiler.disable  # collectives stay outside compiled graphs
    def _global(self, x: torch.Tensor) -> torch.Tensor:
        world, C = distributed.world_size(), x.shape[1]
        n = x.numel() // C * world  # values per channel in the global batch
        xf = x.float()
        # two passes, as torch computes the variance: the mean, then the squared deviations
        mean = distributed.global_sum(xf.sum((0, 2, 3))) / n  # (C,)
        dev = xf - mean.view(1, C, 1, 1)
        var = distributed.global_sum(dev.pow(2).sum((0, 2, 3))) / n  # (C,) biased
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 0.1
            self.running_mean.lerp_(mean.detach(), m)
            self.running_var.lerp_(var.detach() * n / max(n - 1, 1), m)
            self.num_batches_tracked.add_(1)
        y = dev * torch.rsqrt(var + self.eps).view(1, C, 1, 1)
        return (y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)).to(x.dtype)


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


class TiledActionConv(nn.Conv2d):
    """A 3x3 convolution (padding 1) over ``cat([image, action tiled over H x W], 1)``,
    computed without building the tiled tensor.

    Over the tiled channels every pixel sees the same action, so their contribution is the
    weight summed over the kernel taps that fall inside the image: one of 3 x 3 values per
    pixel (top/inner/bottom row x left/inner/right column). The result equals the plain
    convolution of the concatenation (tested), with the same parameters, but costs
    ``B x C_out x 9 x A`` multiply-adds for the action instead of ``B x C_out x 9 x A x H x W``.
    """

    def __init__(self, image_channels: int, action_dim: int, out_channels: int) -> None:
        super().__init__(image_channels + action_dim, out_channels, 3, padding=1)
        self.image_channels = image_channels
        # valid[k, i]: kernel row (or column) k lies inside the image for pixel class i
        # (0 = first row, 1 = inner rows, 2 = last row)
        self.register_buffer(
            "valid",
            torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]).T,
            persistent=False,
        )

    def forward(self, image: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # image (B, C_img, H, W), action (B, A) -> (B, C_out, H, W)
        B, _, H, W = image.shape
        w_img, w_act = self.weight[:, : self.image_channels], self.weight[:, self.image_channels :]
        out = F.conv2d(image, w_img, self.bias, padding=1)  # (B, C_out, H, W)
        taps = torch.einsum("ba,oakl->bokl", action, w_act)  # (B, C_out, 3, 3)
        cls = torch.einsum("bokl,ki,lj->boij", taps, self.valid, self.valid)  # (B, C_out, 3, 3)
        rows = torch.ones(H, dtype=torch.long, device=image.device)
        rows[0], rows[-1] = 0, 2
        cols = torch.ones(W, dtype=torch.long, device=image.device)
        cols[0], cols[-1] = 0, 2
        return out + cls[:, :, rows][:, :, :, cols]  # (B, C_out, H, W)


class Down(nn.Module):
    """conv -> batch norm -> residual -> 2x2 max-pool -> ReLU: halves H and W."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.net = nn.Sequential(
            BatchNorm2d(c_out),
            ResidualLayer(c_out),
            nn.MaxPool2d(2),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, c_in, H, W) -> (B, c_out, H/2, W/2)
        return self.net(self.conv(x))


class ActionDown(Down):
    """The first down-block: its convolution sees the image and the tiled latent action."""

    def __init__(self, image_channels: int, action_dim: int, c_out: int) -> None:
        super().__init__(image_channels + action_dim, c_out)
        self.conv = TiledActionConv(image_channels, action_dim, c_out)

    def forward(self, x: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # x (B, C_img, H, W), action (B, A) -> (B, c_out, H/2, W/2)
        return self.net(self.conv(x, action))


class Up(nn.Module):
    """2x2 transposed conv -> batch norm -> residual -> ReLU: doubles H and W."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(c_in, c_out, 2, stride=2),
            BatchNorm2d(c_out),
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

    With ``space_to_depth`` the U-Net works at 32x32: the context is folded 2x2 into channels
    (``(B, 3T, 64, 64) -> (B, 12T, 32, 32)``, pixel unshuffle), four down-sampling blocks and
    the 2x2 convolution take 32x32 to 1x1 with channels ``base * (1, 2, 4, 8, 16)``, and the
    head's 12 channels unfold into the 64x64 frame (pixel shuffle). No layer runs at 64x64,
    where the narrow full-resolution layers cost most of a CPU step.

    With ``residual`` the network predicts the change instead: ``o[t] + tanh(x)``, starting from
    exactly ``o[t]`` (zero-initialised output layer), so training spends no steps learning to
    copy the static background and the loss is about what moved from the first step.

    With ``action_everywhere`` the latent action also reaches every resolution on the way up: a
    per-channel shift (a linear map of the action) after each up-block, and the head's first
    convolution sees it tiled over the 64x64 image, beside the input frames it copies from. A
    sprite's move then depends on the action at full resolution, not only through the
    bottleneck and the first layer.
    """

    def __init__(
        self,
        action_dim: int,
        context_frames: int = 2,
        base: int = 24,
        image_size: int = 64,
        residual: bool = False,
        action_everywhere: bool = False,
        space_to_depth: bool = False,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.action_everywhere = action_everywhere
        self.fold = 2 if space_to_depth else 1  # pixels per side folded into channels
        if image_size != 64:
            raise ValueError("the world model's U-Net is built for 64x64 frames")
        c_in = 3 * context_frames * self.fold**2
        b = base
        n = 5 if self.fold == 1 else 4  # down-blocks from 64 (or 32) to 2x2
        downs = (c_in + action_dim, *(b * 2**i for i in range(n + 1)))
        self.down = nn.ModuleList(
            [ActionDown(c_in, action_dim, b)] + [Down(downs[i], downs[i + 1]) for i in range(1, n)]
        )
        self.bottom = nn.Conv2d(downs[n], downs[n + 1], 2)  # 2x2 -> 1x1
        ups = (*(b * 2**i for i in range(n, -1, -1)), b)
        # the first up-block sees the bottleneck and the latent action again (in place of the
        # bottleneck skip); later ones see the matching down-block's output
        skips = (action_dim, *downs[n:0:-1])
        self.up = nn.ModuleList(Up(ups[i] + skips[i], ups[i + 1]) for i in range(n + 1))
        self.head = nn.Sequential(
            nn.Conv2d(b + c_in, b, 3, padding=1),
            ResidualLayer(b),
            nn.ReLU(),
            nn.Conv2d(b, 3 * self.fold**2, 1),
        )
        if residual:
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)
        if action_everywhere:
            self.up_shift = nn.ModuleList(nn.Linear(action_dim, ups[i + 1]) for i in range(n + 1))
            self.head_action = TiledActionConv(b + c_in, action_dim, b)
            self.head[0] = nn.Identity()  # its convolution is head_action's

    def forward(self, context: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # shapes for fold 1; with fold 2 (space_to_depth) each H, W below halves and the
        # 3T channels of the state and 3 of the head's output grow 4x
        state = rearrange(context, "b t c h w -> b (t c) h w")  # (B, 3T, 64, 64)
        state = F.pixel_unshuffle(state, self.fold)  # fold 2: (B, 12T, 32, 32)
        x = self.down[0](state, action)  # (B, b, 32, 32): the action tiled over the input
        skips = [x]
        for block in self.down[1:]:
            x = block(x)  # ... -> (B, 16b, 2, 2)
            skips.append(x)
        x = self.bottom(x)  # (B, 32b, 1, 1)
        skips.append(action[:, :, None, None])  # (B, A, 1, 1)
        for i, block in enumerate(self.up):
            x = block(torch.cat([x, skips[-1 - i]], 1))  # ... -> (B, b, 64, 64)
            if self.action_everywhere:
                x = x + self.up_shift[i](action)[:, :, None, None]  # + (B, C, 1, 1)
        x = torch.cat([x, state], 1)  # (B, b + 3T, 64, 64)
        if self.action_everywhere:
            x = self.head_action(x, action)  # (B, b, 64, 64): the action tiled over it too
        out = torch.tanh(F.pixel_shuffle(self.head(x), self.fold))  # (B, 3, 64, 64)
        if self.residual:
            return context[:, -1] + out  # o[t] + change
        return out / 2


class EmbeddingWorldModel(nn.Module):
    """Next-frame prediction in an embedding space instead of pixels (as in LAOM; BYOL/SPR's
    target network).

    An IMPALA-CNN encodes each frame to ``features`` dims; an MLP predicts the embedding of
    ``o[t+1]`` from the embeddings of the context frames and the latent action; the target is
    an exponential-moving-average copy of the encoder (``update_target``), never trained by
    gradient. No decoder: a step costs a fraction of the U-Net's.

    ``forward(context, action)``: context ``(B, T, 3, 64, 64)``, action ``(B, A)`` ->
    predicted embedding ``(B, features)``; ``target(frame)``: ``(B, 3, 64, 64)`` ->
    ``(B, features)``.
    """

    def __init__(
        self,
        action_dim: int,
        context_frames: int = 2,
        width: int = 1,
        features: int = 256,
        hidden: int = 512,
    ) -> None:
        super().__init__()
        self.encoder = ImpalaCNN(in_channels=3, width=width, out_features=features)
        self.predictor = nn.Sequential(
            nn.Linear(context_frames * features + action_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, features),
        )
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)

    def forward(self, context: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        B, T = context.shape[:2]
        e = self.encoder(rearrange(context, "b t c h w -> (b t) c h w"))  # (B*T, F)
        e = rearrange(e, "(b t) f -> b (t f)", b=B, t=T)  # (B, T*F)
        return self.predictor(torch.cat([e, action], 1))  # (B, F)

    @torch.no_grad()
    def target(self, frame: torch.Tensor) -> torch.Tensor:
        # (B, 3, 64, 64) -> (B, F)
        return self.target_encoder(frame)

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """target <- (1 - tau) target + tau online, parameters and buffers alike."""
        for t, o in zip(
            self.target_encoder.state_dict().values(),
            self.encoder.state_dict().values(),
            strict=True,
        ):
            if t.dtype.is_floating_point:
                t.lerp_(o, tau)
            else:
                t.copy_(o)


def embedding_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``2 - 2 cos(pred, target)``: ``(B, F), (B, F) -> (B,)``, 0 = same direction.

    Comparing directions rather than raw vectors keeps the loss from shrinking by shrinking
    the target's scale."""
    return (F.normalize(pred, dim=-1) - F.normalize(target, dim=-1)).pow(2).sum(-1)
