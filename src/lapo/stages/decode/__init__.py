"""Stage 3: decode latent actions into the environment's true actions.

- :mod:`lapo.stages.decode.offline`: fit a decoder on a few labelled transitions.
- :mod:`lapo.stages.decode.online`: PPO with rewards, the decoder re-fit from the agent's own play.

:func:`fit_decoder` is the fit both use.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lapo.data.dataset import WindowDataset
from lapo.models.idm import IDM, idm_latents
from lapo.models.policy import ActionDecoder


def fit_decoder(
    z: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch_size: int = 512,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    label_smoothing: float = 0.05,
    seed: int = 0,
    head: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> ActionDecoder:
    """A fresh :class:`ActionDecoder` fit on latents ``z`` ``(N, A)`` -> actions ``y`` ``(N,)``.

    Cross-entropy with label smoothing, Adam(W), ``steps`` minibatches drawn by epochs over a
    seeded permutation. Latents are standardised by their own mean and std (kept in the
    decoder's buffers, so the decoder applies the same to a policy's latents).

    ``head`` (stage 1's action head: weight ``(K, A)``, bias ``(K,)``) starts the decoder at
    that head: its linear path on the raw latent copies it and the MLP's last layer starts at
    zero, so before the first step the decoder predicts what stage 1's head predicts.
    """
    z, y = z.float().cpu(), y.long().cpu()
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        decoder = ActionDecoder(z.shape[1], skip=head is not None)
    if head is not None and decoder.skip is not None:
        with torch.no_grad():
            decoder.skip.weight.copy_(head[0])
            decoder.skip.bias.copy_(head[1])
            decoder.net[-1].weight.zero_()
            decoder.net[-1].bias.zero_()
    decoder.z_mean.copy_(z.mean(0))
    decoder.z_std.copy_(z.std(0).nan_to_num(1.0) + 1e-6 if len(z) > 1 else torch.ones(z.shape[1]))
    opt = torch.optim.AdamW(decoder.parameters(), lr=learning_rate, weight_decay=weight_decay)
    n, bs = len(z), min(batch_size, len(z))
    perm, pos = torch.randperm(n, generator=g), 0
    for _ in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + bs]
        pos += bs
        loss = F.cross_entropy(decoder(z[idx]), y[idx], label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return decoder.eval()


def encode_dataset_windows(
    idm: IDM, ds: WindowDataset, starts: np.ndarray, device: torch.device, chunk: int = 512
) -> tuple[torch.Tensor, np.ndarray | None]:
    """IDM latents of the windows at ``starts``, read ``chunk`` at a time (the split may not
    fit in memory): ``(z (N, A) float on CPU, middle frames' actions (N,) or None)``."""
    windows = (batch["obs"] for batch in ds.chunks(starts, chunk))
    z, _ = idm_latents(idm.to(device), windows, device)
    return z, (ds.arrays["actions"][starts + 1] if ds.has_actions else None)
