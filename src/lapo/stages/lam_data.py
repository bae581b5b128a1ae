"""The windows one stage-1 run reads, and each step's batch of them.

:func:`stage1_data` opens the dataset once: training windows ``o[t-1] .. o[t+K]`` (K: the
IDM's lookahead), fixed test windows for the test loss, the probe's fixed labelled windows
and, with labels in stage 1, the K labelled windows (recorded in the run folder).
:class:`Stage1Batches` draws each step's batch on the run's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lapo import distributed
from lapo.config import LAMConfig
from lapo.data.dataset import DeviceWindows, WindowDataset
from lapo.data.format import open_dataset
from lapo.data.labels import labelled_starts, write_labelled
from lapo.models.frames import frames_to_float
from lapo.runs import Run


@dataclass
class Stage1Data:
    """The windows one stage-1 run reads: training windows (``o[t-1] .. o[t+K]`` for the
    IDM's lookahead, from ``o[t-2]`` with ``cfg.previous_frames``), fixed test windows, the
    probe's fixed labelled windows and, with labels in stage 1, the K labelled windows."""

    train: WindowDataset
    test_batch: dict
    probe_train: dict | None
    probe_test: dict | None
    labelled: tuple[WindowDataset, np.ndarray] | None
    manifest: dict


def stage1_data(cfg: LAMConfig, data: Path, out: Path) -> Stage1Data:
    """Open ``data`` for stage 1; with labels, choose the K windows and record them in ``out``."""
    manifest = open_dataset(data).manifest
    # training windows reach o[t+K] for the IDM's lookahead (and start at o[t-2] for the
    # previous latent z[t-1]); test windows are LAPO's three frames (from o[t-2] for a world
    # model that takes z[t-1]); the probe's and the labelled windows are three frames
    train = WindowDataset(data, "train", k=cfg.previous_frames + cfg.idm_lookahead + 2)
    test_loss = WindowDataset(data, "test", k=3 + int(cfg.wm_prev_latent))
    test = WindowDataset(data, "test", k=3) if cfg.wm_prev_latent else test_loss
    three = WindowDataset(data, "train", k=3) if train.k != 3 else train
    labelled = None
    if cfg.uses_labels:
        labels_from = Path(cfg.labels_from) if cfg.labels_from else None
        starts = labelled_starts(
            data, cfg.labels, cfg.labels_seed, labels_from, purpose="stage 1 with --labels"
        )
        write_labelled(out, data, starts, cfg.labels_seed)
        labelled = three, starts  # three-frame windows, like the probe's
    # fixed windows for the test loss and the probe, drawn once from their own generator
    fixed = np.random.default_rng(cfg.seed + 1)
    test_batch = test_loss.sample(min(cfg.test_windows, len(test_loss)), fixed)
    probe_tr = probe_te = None
    if manifest.get("has_actions") and cfg.probe_every > 0:
        probe_tr = three.sample(cfg.probe_train, fixed)
        probe_te = test.sample(cfg.probe_test, fixed)
    return Stage1Data(train, test_batch, probe_tr, probe_te, labelled, manifest)


def labelled_batch(
    ds: DeviceWindows, starts: np.ndarray, cfg: LAMConfig, rng: np.random.Generator, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of a mini-batch of the K labelled windows: float frames
    ``(L, 3, 3, 64, 64)`` and the middle frame's actions ``(L,)``, ``L = label_batch`` (a
    quarter of the batch if 0) over all ranks."""
    n = cfg.label_batch or max(cfg.batch_size // 4, 1)
    batch = ds(distributed.local(np.sort(rng.choice(starts, n, replace=len(starts) < n))))
    y = torch.from_numpy(batch["actions"][:, 1]).to(device, non_blocking=True)
    return frames_to_float(batch["obs"]), y


class Stage1Batches:
    """Each step's batch on the run's device: every rank draws the global batch of training
    windows (and, with labels, of labelled windows) from ``rng`` and keeps its slice."""

    def __init__(self, d: Stage1Data, cfg: LAMConfig, run: Run) -> None:
        self.d, self.cfg, self.run = d, cfg, run
        self.train = DeviceWindows(d.train, run.device, cfg.data_on_device)
        self.labelled = None
        if d.labelled is not None:  # the train split's frames again: shared when held
            held = DeviceWindows(d.labelled[0], run.device, cfg.data_on_device, self.train.frames)
            self.labelled = held, d.labelled[1]

    def __call__(self, rng: np.random.Generator) -> tuple[torch.Tensor, tuple | None]:
        """Float frames ``(B, P+K+2, 3, 64, 64)`` (``P = cfg.previous_frames``) and the
        labelled batch (or None)."""
        obs = self.train(self.run.local(self.d.train.draw(self.cfg.batch_size, rng)))["obs"]
        labelled = None
        if self.labelled is not None:
            labelled = labelled_batch(*self.labelled, self.cfg, rng, self.run.device)
        return frames_to_float(obs), labelled
