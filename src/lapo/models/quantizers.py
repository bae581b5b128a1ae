"""Bottlenecks for the latent action: EMA vector quantisation, FSQ, or none.

Every quantiser maps a continuous latent action ``z`` ``(B, latent_dim)`` to
``QuantizerOutput(z_q (B, latent_dim), loss (), indices, stats)`` with a straight-through
gradient, so the inverse dynamics model learns through the bottleneck.

- :class:`EMAVectorQuantizer`: VQ-VAE with exponential-moving-average codebooks
  (van den Oord et al. 2017, appendix; as in LAPO), plus dead-code restarts: a code that no
  latent of the last ``restart_unused_steps`` training batches chose is moved onto a random
  latent of the current batch (as in Jukebox, Dhariwal et al. 2020, SoundStream, Zeghidour
  et al. 2021, and the Genie-style LAMs that reset codes unused for 50 steps). LAPO's
  published quantiser has no restarts and collapses to a few codes at small budgets;
  ``reference_counts`` reproduces its count bookkeeping exactly.
- :class:`FSQ`: finite scalar quantisation (Mentzer et al. 2023): each dimension is bounded
  and rounded to a few levels; no codebook, so nothing can collapse.
- :class:`NoQuantizer`: the continuous latent, for ablations.

Under ``torchrun`` the EMA statistics are those of the global batch: each rank's code counts
and sums are summed over the ranks before the update, and restarts pick from the gathered
global batch with the same RNG on every rank (:mod:`lapo.distributed`), so every rank keeps
the codebook one process would. Statistics are tensors: reading them is the caller's
host synchronisation, at log steps only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from lapo import distributed
from lapo.config import QuantizerConfig, parse_levels


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor
    """(B, latent_dim) quantised latent, straight-through gradient to z."""
    loss: torch.Tensor
    """() auxiliary loss (VQ commitment), 0 for the others."""
    indices: torch.Tensor | None
    """(B, G, L) code indices (G codebooks / groups, L latents), or None."""
    stats: dict[str, torch.Tensor]
    """Codebook perplexity and usage ``()`` each, for logging."""


def one_hot(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """``(..., n)`` int -> ``(..., n, num_codes)`` float; unlike ``F.one_hot`` it never reads
    the indices back to the host to check them (no synchronisation on a GPU)."""
    out = torch.zeros(*indices.shape, num_codes, device=indices.device)
    return out.scatter_(-1, indices.unsqueeze(-1), 1.0)


def perplexity(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """exp(entropy) of the code histogram: (..., n) int -> (...) float; 1 = one code used."""
    counts = one_hot(indices, num_codes).mean(-2)
    return torch.exp(-(counts * torch.log(counts + 1e-10)).sum(-1))


class EMAVectorQuantizer(nn.Module):
    """EMA vector quantiser with optional dead-code restarts; see the module doc."""

    def __init__(self, cfg: QuantizerConfig, eps: float = 1e-5) -> None:
        super().__init__()
        self.cfg = cfg
        self.eps = eps
        N, M, D = cfg.num_codebooks, cfg.num_entries, cfg.code_dim
        # LAPO's init: uniform in +-5/M
        embedding = torch.empty(N, M, D).uniform_(-5.0 / M, 5.0 / M)
        self.register_buffer("embedding", embedding)
        count = torch.zeros(N, M) if cfg.reference_counts else torch.ones(N, M)
        self.register_buffer("ema_count", count)
        self.register_buffer("ema_weight", embedding.clone())
        # training steps since each code was last chosen by any latent of a batch
        self.register_buffer("steps_unused", torch.zeros(N, M, dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # runs saved before steps_unused existed load with every code counted as just used
        state_dict.setdefault(prefix + "steps_unused", torch.zeros_like(self.steps_unused))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        # distances and EMA statistics in float32, under bf16 autocast too
        with torch.autocast(z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> QuantizerOutput:
        # z: (B, N*L*D) -> x: (N, B*L, D), one set of vectors per codebook
        cfg = self.cfg
        N, M, D, L = cfg.num_codebooks, cfg.num_entries, cfg.code_dim, cfg.latents_per_codebook
        B = z.shape[0]
        x = rearrange(z, "b (n l d) -> n (b l) d", n=N, l=L, d=D)
        xd = x.detach().float()
        # squared distances (N, B*L, M)
        dist = (
            xd.pow(2).sum(-1, keepdim=True)
            - 2 * xd @ self.embedding.transpose(1, 2)
            + self.embedding.pow(2).sum(-1).unsqueeze(1)
        )
        idx = dist.argmin(-1)  # (N, B*L)
        q = torch.gather(self.embedding, 1, idx.unsqueeze(-1).expand(-1, -1, D))  # (N, B*L, D)

        if self.training:
            self._ema_update(xd, idx)

        loss = cfg.commitment_cost * F.mse_loss(x, q.detach().to(x.dtype))
        q = x + (q.to(x.dtype) - x).detach()  # straight-through estimator
        z_q = rearrange(q, "n (b l) d -> b (n l d)", b=B, l=L)
        indices = rearrange(idx, "n (b l) -> b n l", b=B, l=L)
        with torch.no_grad():
            perp = perplexity(idx, M)  # (N,)
            # share of codes chosen at least once in the recent window (the restart horizon,
            # else 100 steps): what the codebook actually uses, not what its EMA remembers
            horizon = cfg.restart_unused_steps or 100
            used = (self.steps_unused < horizon).float().mean()
        stats = {"perplexity": perp.sum(), "usage": used}
        return QuantizerOutput(z_q, loss, indices, stats)

    @torch.no_grad()
    def _ema_update(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        # x: (N, n, D) latents, idx: (N, n) their nearest codes
        cfg = self.cfg
        M = cfg.num_entries
        onehot = one_hot(idx, M)  # (N, n, M)
        # the global batch's uses (N, M) and sums (N, M, D): summed over the ranks
        uses_dw = torch.cat([onehot.sum(1).unsqueeze(-1), onehot.transpose(1, 2) @ x], -1)
        uses_dw = distributed.all_reduce_(uses_dw)  # (N, M, 1 + D)
        uses, dw = uses_dw[..., 0], uses_dw[..., 1:]
        self.ema_count.mul_(cfg.decay).add_(uses, alpha=1 - cfg.decay)
        # Laplace smoothing keeps unused codes from dividing by zero
        n = self.ema_count.sum(-1, keepdim=True)
        count = (self.ema_count + self.eps) / (n + M * self.eps) * n
        if cfg.reference_counts:
            self.ema_count.copy_(count)
        self.ema_weight.mul_(cfg.decay).add_(dw, alpha=1 - cfg.decay)
        self.embedding.copy_(self.ema_weight / count.unsqueeze(-1))
        self.steps_unused.add_(1).masked_fill_(uses > 0, 0)
        if cfg.restart_unused_steps <= 0:
            return  # no restarts (the paper's quantiser): nothing to read back

        dead = self.steps_unused >= cfg.restart_unused_steps
        if dead.any():  # the same answer on every rank: the statistics are global
            self._restart(distributed.gather(x, dim=1), dead)

    @torch.no_grad()
    def _restart(self, x: torch.Tensor, dead: torch.Tensor) -> None:
        """Move each dead code ``dead`` ``(N, M)`` onto a random latent of ``x`` ``(N, n, D)``
        (the global batch's), its EMA statistics reset to one use of that latent per batch."""
        cfg = self.cfg
        one = 1.0 / cfg.num_entries
        for c in range(cfg.num_codebooks):
            d = dead[c].nonzero().squeeze(-1)
            if d.numel() == 0:
                continue
            pick = torch.randint(0, x.shape[1], (d.numel(),), device=x.device)
            self.embedding[c, d] = x[c, pick]
            self.ema_weight[c, d] = x[c, pick] * one
            self.ema_count[c, d] = one
            self.steps_unused[c, d] = 0

    @torch.no_grad()
    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices ``(B, N, L)`` -> quantised latent ``(B, N*L*D)``."""
        B, N, L = indices.shape
        D = self.cfg.code_dim
        flat = rearrange(indices, "b n l -> n (b l)")
        q = torch.gather(self.embedding, 1, flat.unsqueeze(-1).expand(-1, -1, D))
        return rearrange(q, "n (b l) d -> b (n l d)", b=B, l=L)


class FSQ(nn.Module):
    """Finite scalar quantisation: ``z`` ``(B, G*K)`` -> each of K dims rounded to its levels.

    A dimension with ``l`` levels is squashed to ``(l-1)/2 * tanh(.)`` (shifted by half a step
    for even ``l``), rounded with a straight-through gradient and rescaled to [-1, 1].
    """

    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        levels = torch.tensor(parse_levels(cfg.fsq_levels), dtype=torch.float32)
        self.register_buffer("levels", levels, persistent=False)
        basis = torch.cumprod(torch.cat([torch.ones(1), levels[:-1]]), 0)
        self.register_buffer("basis", basis, persistent=False)
        self.num_codes = int(levels.prod())

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        # z: (B, G*K) -> (B, G, K)
        G, K = self.cfg.fsq_groups, len(self.levels)
        x = rearrange(z, "b (g k) -> b g k", g=G, k=K).float()
        half = (self.levels - 1) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        bounded = torch.tanh(x + shift) * half - offset
        rounded = bounded + (bounded.round() - bounded).detach()
        z_q = (rounded + offset) / half  # in [-1, 1]
        digits = (rounded.detach().round() + offset + half).long()  # (B, G, K) in [0, l)
        indices = (digits * self.basis.long()).sum(-1, keepdim=True)  # (B, G, 1)
        with torch.no_grad():
            perp = perplexity(indices.squeeze(-1).T, self.num_codes)  # (G,)
            hit = torch.zeros(self.num_codes, device=z.device).index_fill_(0, indices.flatten(), 1)
        stats = {"perplexity": perp.sum(), "usage": hit.mean()}
        out = rearrange(z_q, "b g k -> b (g k)").to(z.dtype)
        return QuantizerOutput(out, z.new_zeros(()), indices, stats)


class NoQuantizer(nn.Module):
    """The identity: a continuous latent action."""

    def __init__(self, cfg: QuantizerConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        # (B, D) -> (B, D)
        return QuantizerOutput(z, z.new_zeros(()), None, {})


def make_quantizer(cfg: QuantizerConfig) -> nn.Module:
    """Build the bottleneck that ``cfg.kind`` names."""
    _ = cfg.latent_dim  # validates kind
    return {"ema_vq": EMAVectorQuantizer, "fsq": FSQ, "none": NoQuantizer}[cfg.kind](cfg)
