"""``lapo lam probe``: the latent probe of a trained stage-1 run, fit on a dataset's labelled
train windows and scored on its test windows (:func:`lapo.evaluation.probe.probe_windows`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lapo.data.checks import dataset_for
from lapo.data.dataset import WindowDataset
from lapo.data.format import DatasetError
from lapo.evaluation.probe import probe_windows
from lapo.models.lam import LatentActionModel
from lapo.runkinds import lam_config_from_dict, load_lam


def probe_lam(
    run: Path,
    data: Path,
    labels: int = 4_096,
    test_windows: int = 8_192,
    seed: int = 0,
    epochs: int | None = None,
    untrained: bool = False,
    target: int = 1,
    pair: bool = False,
) -> dict:
    """Fit the latent probe on ``labels`` labelled train windows of ``data``; score on test.

    ``epochs=None`` (the quick protocol, 30 epochs) refuses more labels than the data holds;
    with ``epochs`` given (the paper's protocol: 65,536 windows, 3 epochs) ``labels`` is capped
    at the train windows there are, and the report says how many were used. ``untrained``
    probes the run's architecture at its initialisation (seeded by ``seed``) instead: the
    baseline a trained IDM must beat, measured the same way. ``target``: which action of the
    window the probe predicts (see :func:`probe_windows`). ``pair``: windows of four frames
    ``o[t-2] .. o[t+1]``, and beside the probe of ``z[t]`` a probe of ``(z[t-1], z[t])``
    (``"pair"`` in the report; both on the same windows and labels).

    Returns accuracy, balanced accuracy, majority-class accuracy, chance and the confusion
    matrix (rows: true action, columns: predicted) of the continuous IDM latent.
    """
    model, config = load_lam(run)
    if untrained:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LatentActionModel(lam_config_from_dict(config["lam"])).eval()
    dataset_for(data, f"stage-1 run {run}", config.get("game"), actions_for="the probe")
    k = 4 if pair else 3
    train, test = WindowDataset(data, "train", k=k), WindowDataset(data, "test", k=k)
    if epochs is not None:
        labels = min(labels, len(train))
    if labels > len(train):
        raise DatasetError(
            f"--labels {labels} is more than the {len(train)} train windows in {data}"
        )
    rng = np.random.default_rng(seed)
    tr = train.read(np.sort(rng.choice(train.starts, labels, replace=False)))
    n_test = min(test_windows, len(test))
    te = test.read(np.sort(rng.choice(test.starts, n_test, replace=False)))
    report = probe_windows(model, tr, te, torch.device("cpu"), seed, epochs or 30, target, pair)
    return {
        "run": str(run),
        "data": str(data),
        "labels": labels,
        "target": ("a[t-1]", "a[t]", "a[t+1]")[target],
        "epochs": epochs or 30,
        "seed": seed,
        **report,
    }
