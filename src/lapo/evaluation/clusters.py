"""Clusters of latent actions, for data without true actions.

Without labels, the only handle on what the IDM's latents mean is to group them and look at
what each group does. :func:`kmeans` is a small seeded k-means (k-means++ seeding, Lloyd
iterations; Arthur & Vassilvitskii 2007) in numpy; :func:`latent_sample` draws the windows
and latents that ``lapo lam plot`` and ``lapo play`` cluster, so that with the same data,
seed and sizes cluster ``i`` of the picture is button ``i`` of the play page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lapo.data.dataset import WindowDataset
from lapo.data.format import DatasetError
from lapo.models.idm import idm_latents


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


def test_or_train(data: Path, k: int = 3) -> WindowDataset:
    """``data``'s test windows of ``k`` frames, or its train windows where the test split has
    none."""
    try:
        return WindowDataset(data, "test", k=k)
    except DatasetError:
        return WindowDataset(data, "train", k=k)


def latent_sample(
    model, data: Path, windows: int, seed: int = 0
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """``windows`` windows of ``data`` (test split if it has any) drawn with ``seed``, and the
    stage-1 ``model``'s latents of them: ``(batch, z (N, A), z_q (N, A))``. ``batch`` is the
    loader's (``obs`` uint8 ``(N, 3, 64, 64, 3)``, ``actions`` ``(N, 3)`` if any)."""
    ds = test_or_train(data)
    rng = np.random.default_rng(seed)
    batch = ds.read(np.sort(rng.choice(ds.starts, min(windows, len(ds)), replace=False)))
    obs = batch["obs"]
    chunks = (obs[i : i + 256] for i in range(0, len(obs), 256))
    z, z_q = idm_latents(model.idm, chunks, torch.device("cpu"))
    return batch, z, z_q
