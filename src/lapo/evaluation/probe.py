"""The latent probe: how much of the true action a latent action recovers.

An MLP (128 -> 128 -> 15 by default, as in LAPO's probe) is fit from latent actions to true
actions on labelled train windows and scored on test windows. Accuracy alone flatters a
model on games where one action dominates, so we also report balanced accuracy (mean
per-class recall), the majority-class accuracy and chance (1/15), and the confusion matrix.
:func:`probe_windows` probes a stage-1 model's IDM on windows and, where stage 1 was trained
with labels, scores its action head beside the probe (:func:`head_report`); with ``pair`` it
also probes the pair ``(z[t-1], z[t])`` of consecutive latents.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lapo.envs import NUM_ACTIONS
from lapo.models.idm import idm_latents
from lapo.models.lam import LatentActionModel


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Accuracy, balanced accuracy, majority-class accuracy, chance and the confusion matrix.

    ``confusion[i][j]`` counts test windows of true action ``i`` predicted as ``j``; balanced
    accuracy averages recall over the classes present in ``y_true``.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    conf = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(conf, (y_true, y_pred), 1)
    support = conf.sum(1)
    present = support > 0
    recall = np.diag(conf)[present] / support[present]
    return {
        "accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": float(recall.mean()),
        "majority_class_accuracy": float(support.max() / support.sum()),
        "chance": 1.0 / num_classes,
        "n_test": int(len(y_true)),
        "confusion": conf.tolist(),
    }


def fit_probe(
    train_z: torch.Tensor,
    train_y: torch.Tensor,
    test_z: torch.Tensor,
    test_y: torch.Tensor,
    hidden: int = 128,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    num_classes: int = NUM_ACTIONS,
) -> dict:
    """Fit an MLP probe ``(N, A) -> (N,)`` classes and report on the test set.

    Latents are standardised with the train set's statistics. Returns
    :func:`classification_report` plus ``n_train``.
    """
    g = torch.Generator().manual_seed(seed)
    mean, std = train_z.mean(0), train_z.std(0) + 1e-6
    xtr, xte = (train_z - mean) / std, (test_z - mean) / std
    # a forked RNG: the probe runs inside training loops, whose own RNG stream it must not reset
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mlp = nn.Sequential(
            nn.Linear(xtr.shape[1], hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    n = len(xtr)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(mlp(xtr[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = mlp(xte).argmax(-1)
    report = classification_report(test_y.numpy(), pred.numpy(), num_classes)
    report["n_train"] = int(n)
    return report


@torch.no_grad()
def encode_windows(
    model: LatentActionModel, obs: np.ndarray, device: torch.device, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """IDM latents of uint8 windows ``(N, 3, 64, 64, 3)``: ``(z (N, A), z_q (N, A))`` on CPU."""
    return idm_latents(model.idm, (obs[i : i + batch] for i in range(0, len(obs), batch)), device)


def probe_windows(
    model: LatentActionModel,
    train: dict,
    test: dict,
    device: torch.device,
    seed: int = 0,
    epochs: int = 30,
    target: int = 1,
    pair: bool = False,
) -> dict:
    """Fit the probe on the IDM latents of ``train`` windows and score it on ``test`` windows.

    ``train``/``test`` are loader batches (``obs`` ``(N, 3, 64, 64, 3)``, ``actions`` ``(N, 3)``).
    The latent of window ``o[t-1], o[t], o[t+1]`` is labelled with the action taken at ``o[t]``
    (the one that led to ``o[t+1]``): the middle frame's action, ``target=1``; ``target=0``
    labels it with ``a[t-1]`` (a latent that carries the agent's velocity predicts that one
    too), ``2`` with ``a[t+1]`` (not in the window: chance).

    With ``pair`` the windows are ``o[t-2] .. o[t+1]`` (``obs`` ``(N, 4, 64, 64, 3)``,
    ``actions`` ``(N, 4)``): the report is the probe of ``z[t]`` (of the last three frames) as
    above, and under ``"pair"`` that of a second probe fit on ``(z[t-1], z[t])`` concatenated
    ``(N, 2A)``, ``z[t-1]`` from the first three frames, for the same action. Where ``z[t]``
    carries the displacement (about ``a[t-1]``) the pair can tell the change.
    """
    first = int(pair)  # the window's o[t-1]
    ztr, _ = encode_windows(model, train["obs"][:, first:], device)
    zte, _ = encode_windows(model, test["obs"][:, first:], device)
    ytr = torch.from_numpy(train["actions"][:, first + target])
    yte = torch.from_numpy(test["actions"][:, first + target])
    report = fit_probe(ztr, ytr, zte, yte, seed=seed, epochs=epochs)
    if model.action_head is not None and target == 1:
        report.update(head_report(model, zte, test["actions"][:, first + 1]))
    if pair:
        ptr, _ = encode_windows(model, train["obs"][:, :3], device)  # z[t-1]
        pte, _ = encode_windows(model, test["obs"][:, :3], device)
        both = fit_probe(torch.cat([ptr, ztr], 1), ytr, torch.cat([pte, zte], 1), yte, seed=seed,
                         epochs=epochs)  # fmt: skip
        report["pair"] = both
    return report


def head_report(model: LatentActionModel, z: torch.Tensor, actions: np.ndarray) -> dict:
    """How well stage 1's action head, fit on its K labelled windows only, names the true
    action of held-out windows from their IDM latents ``z (N, A)``: the figure to set beside
    baseline (b)'s supervised IDM on the same K (the probe is fit on more labels than K)."""
    head = model.action_head
    with torch.no_grad():
        pred = head(z.to(head.weight.device)).argmax(-1).cpu().numpy()  # (N,)
    rep = classification_report(actions, pred, NUM_ACTIONS)
    return {"head_accuracy": rep["accuracy"], "head_balanced_accuracy": rep["balanced_accuracy"]}
