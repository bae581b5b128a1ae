"""Clusters of latent actions, for data without true actions.

Without labels, the only handle on what the IDM's latents mean is to group them and look at
what each group does. :func:`kmeans` is a small seeded k-means (k-means++ seeding, Lloyd
iterations; Arthur & Vassilvitskii 2007) in numpy; :func:`exact_codes` snaps quantised
latents onto their codes so that equal codes compare equal. ``lapo lam plot`` and
``lapo play`` cluster the same sample of latents
(:func:`lapo.report.latents.latent_sample`): with the same data, seed and sizes, cluster
``i`` of the picture is button ``i`` of the play page.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange

from lapo.models.quantizers import FSQ, EMAVectorQuantizer


@dataclass
class KMeans:
    """The result of :func:`kmeans`: clusters numbered by size, largest first."""

    centres: np.ndarray
    """(k, D) float64 cluster means."""
    labels: np.ndarray
    """(N,) int64 cluster of each point."""
    inertia: float
    """Sum of squared distances of the points to their centres."""


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances ``(N, D), (k, D) -> (N, k)``."""
    d = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]
    return np.maximum(d, 0.0)


def _plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre drawn with probability ~ squared distance to the
    nearest centre so far. ``x`` ``(N, D)`` -> ``(k, D)``."""
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d = _sq_dist(x, np.stack(centres)).min(1)  # (N,)
        centres.append(x[rng.choice(len(x), p=d / d.sum())])
    return np.stack(centres)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> KMeans:
    """Seeded k-means of the points ``x`` ``(N, D)`` into ``k`` clusters.

    ``k`` is capped at the number of distinct points (a quantised latent takes few values).
    A cluster that loses all its points restarts on the point farthest from its centre.
    Clusters are renumbered by size, largest first (ties: by first point), so a run is
    reproducible from ``seed`` and cluster 0 is the most common latent action.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"kmeans needs points (N, D), got shape {x.shape}")
    k = min(int(k), len(np.unique(x, axis=0)))
    if k < 1:
        raise ValueError("kmeans needs k >= 1")
    rng = np.random.default_rng(seed)
    centres = _plus_plus(x, k, rng)
    labels = np.full(len(x), -1)
    for _ in range(iters):
        d = _sq_dist(x, centres)  # (N, k)
        new = d.argmin(1)
        for c in np.setdiff1d(np.arange(k), new):  # empty clusters
            far = d[np.arange(len(x)), new].argmax()
            new[far] = c
            d[far] = 0.0
        if (new == labels).all():
            break
        labels = new
        centres = np.stack([x[labels == c].mean(0) for c in range(k)])
    order = sorted(range(k), key=lambda c: (-(labels == c).sum(), (labels == c).argmax()))
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    centres, labels = centres[order], rank[labels]
    inertia = float(((x - centres[labels]) ** 2).sum())
    return KMeans(centres, labels, inertia)


def nearest_points(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """For each centre ``(k, D)``, the index of the nearest point of ``x`` ``(N, D)``: ``(k,)``.
    Snaps a cluster's mean onto a latent the IDM actually gave."""
    return _sq_dist(np.asarray(x, np.float64), np.asarray(centres, np.float64)).argmin(0)


@torch.no_grad()
def exact_codes(
    quantizer: torch.nn.Module, z_q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Quantised latents ``z_q`` ``(N, A)`` as the quantiser's exact codes, and each slot's
    code index ``(N, slots)`` (a VQ latent's codes; an FSQ group's index), or ``None`` for a
    continuous latent (returned as it is).

    The straight-through estimator (``z + (q - z).detach()``) leaves float noise on ``z_q``:
    two windows given the same code differ in the last bits. Snapped, equal codes are equal."""
    if isinstance(quantizer, EMAVectorQuantizer):
        was = quantizer.training
        idx = quantizer.eval()(z_q).indices  # (N, codebooks, latents): the nearest codes
        quantizer.train(was)
        return quantizer.codes(idx), rearrange(idx, "b n l -> b (n l)")
    if isinstance(quantizer, FSQ):
        half = (quantizer.levels - 1) / 2  # (K,)
        x = rearrange(z_q.float(), "b (g k) -> b g k", k=len(half))
        digits = (x * half + half).round()  # (N, G, K) in [0, levels)
        index = (digits.long() * quantizer.basis.long()).sum(-1)  # (N, G)
        return rearrange((digits - half) / half, "b g k -> b (g k)"), index
    return z_q, None
