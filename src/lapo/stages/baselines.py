"""The baselines a reviewer asks for, at the same budgets as LAPO's stages 2 and 3.

- (a) :func:`bc_on_labels`: BC from scratch on the same K labelled transitions that offline
  decoding used (the same seed draws the same windows).
- (b) :func:`idm_labels_bc`: a supervised IDM trained on those K labels labels the dataset,
  then BC on its labels (the recipe of VPT and BCO); the labels are computed as BC draws each
  batch, as stage 2's latents are.
- (c) :func:`ppo_from_scratch`: PPO with the policy's architecture for the same frames.

(a) and (b) write ``action-policy`` runs; (c) writes a PPO run (kind ``ppo-expert``); all
three are policies ``lapo eval`` accepts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lapo import distributed
from lapo.checkpoint import CheckpointError, load_tensors, save_tensors, write_json
from lapo.config import BCConfig, ExpertConfig, SupervisedIDMConfig
from lapo.data.dataset import WindowDataset
from lapo.data.labels import labelled_starts, write_labelled
from lapo.envs import NUM_ACTIONS
from lapo.evaluation.probe import classification_report
from lapo.models.frames import frames_to_float
from lapo.models.idm import map_windows, stack_frames
from lapo.models.impala import ImpalaCNN
from lapo.rl.expert import train_expert
from lapo.runs import start_run
from lapo.stages.bc import ActionTargets, train_action_bc


def bc_on_labels(
    cfg: BCConfig,
    data: Path,
    out: Path,
    labels: int,
    labels_from: Path | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Baseline (a): BC from scratch on K labelled windows (same choice as decoding)."""
    starts = labelled_starts(data, labels, cfg.seed, labels_from, purpose="baseline (a)")
    summary = train_action_bc(
        cfg,
        data,
        out,
        train_starts=starts,
        run_config={"baseline": "bc-on-labels", "labels": len(starts), "command": command},
        progress=progress,
        desc=f"bc on {len(starts)} labels",
    )
    record_labelled(out, data, starts, cfg.seed)
    return summary


def record_labelled(out: Path, data: Path, starts: np.ndarray, seed: int) -> None:
    """Write the K windows a baseline trained on beside it (rank 0), as decoding does."""
    if distributed.current().main:
        write_labelled(out, data, starts, seed)


def supervised_idm(cfg: SupervisedIDMConfig) -> nn.Module:
    """IMPALA-CNN over stacked ``o[t-1], o[t], o[t+1]`` (and differences) -> 15 logits."""
    channels = 15 if cfg.differences else 9
    return nn.Sequential(
        ImpalaCNN(in_channels=channels, width=cfg.width), nn.Linear(256, NUM_ACTIONS)
    )


def idm_predict(
    model: nn.Module,
    cfg: SupervisedIDMConfig,
    ds: WindowDataset,
    starts: np.ndarray,
    device: torch.device,
) -> np.ndarray:
    """The supervised IDM's action ``(N,)`` for the windows of ``ds`` at ``starts``."""
    model.eval()
    windows = (batch["obs"] for batch in ds.chunks(starts, 512))
    (pred,) = map_windows(
        lambda x: model(stack_frames(x, cfg.differences, cfg.difference_scale)).argmax(-1),
        windows,
        device,
    )
    return pred.numpy()


def score_supervised_idm(
    model: nn.Module, cfg: SupervisedIDMConfig, test: WindowDataset, seed: int, device: torch.device
) -> dict:
    """:func:`classification_report` of the supervised IDM on up to 4,096 test windows drawn
    by ``seed``."""
    rng = np.random.default_rng(seed)
    te = np.sort(rng.choice(test.starts, min(4_096, len(test)), replace=False))
    pred = idm_predict(model, cfg, test, te, device)
    return classification_report(test.arrays["actions"][te + 1], pred, NUM_ACTIONS)


def supervised_idm_loss(
    model: nn.Module, cfg: SupervisedIDMConfig, batch: dict[str, np.ndarray], device: torch.device
) -> torch.Tensor:
    """Cross-entropy of the supervised IDM on a batch of windows ``(B, 3, 64, 64, 3)``
    against the middle frames' actions ``(B,)``."""
    x = frames_to_float(torch.from_numpy(batch["obs"]).to(device))
    y = torch.from_numpy(batch["actions"][:, 1]).to(device)
    return F.cross_entropy(model(stack_frames(x, cfg.differences, cfg.difference_scale)), y)


def train_supervised_idm(
    cfg: SupervisedIDMConfig,
    train: WindowDataset,
    starts: np.ndarray,
    device: torch.device,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Fit :func:`supervised_idm` with cross-entropy on the middle actions of the windows at
    ``starts`` (K labels for baseline (b); every train window for the stage-1 ceiling)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = supervised_idm(cfg).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    bs = min(cfg.batch_size, len(starts))
    for _ in tqdm(range(cfg.steps), desc="supervised idm", disable=not progress):
        batch = train.read(starts[rng.integers(0, len(starts), bs)])
        loss = supervised_idm_loss(model, cfg, batch, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model


class IDMActionTargets(ActionTargets):
    """Baseline (b)'s target: the supervised IDM's action for each window, computed as each
    batch is drawn (as stage 2's latents are), so only the windows BC reads are labelled; the
    K labelled windows keep their true action. Test windows are scored against the true
    actions, as for every action baseline."""

    def __init__(
        self,
        idm: nn.Module,
        cfg: SupervisedIDMConfig,
        labelled: np.ndarray,
        device: torch.device,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(device, label_smoothing)
        self.idm, self.cfg = idm.eval(), cfg
        self.labelled = np.asarray(labelled)  # (K,): the labelled window starts

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        # (B, 3, 64, 64, 3) uint8 windows on the device -> (B,) int64 actions
        x = stack_frames(frames_to_float(batch["obs"]), self.cfg.differences,
                         self.cfg.difference_scale)  # fmt: skip
        predicted = self.idm(x).argmax(-1)
        true = self.test_targets(batch)  # the middle frames' true actions
        keep = torch.from_numpy(np.isin(batch["index"], self.labelled)).to(self.device)
        return torch.where(keep, true, predicted)


def fit_labelling_idm(
    idm_cfg: SupervisedIDMConfig,
    data: Path,
    out: Path,
    starts: np.ndarray,
    seed: int,
    device: torch.device,
    progress: bool = True,
) -> tuple[nn.Module, dict]:
    """Baseline (b)'s supervised IDM, fit on the K labelled windows ``starts`` and scored on
    test windows: ``(model, report)``. Saved to ``out/supervised_idm.safetensors`` (the report
    in its header) and read back from there by a resumed run."""
    path = out / "supervised_idm.safetensors"
    settings = dataclasses.asdict(idm_cfg)
    if path.exists():
        tensors, report = load_tensors(path)
        if report.get("idm") != settings:
            raise CheckpointError(
                f"{path} was fit with other supervised-IDM settings ({report.get('idm')}); "
                "pass the same settings or a new --out"
            )
        model = supervised_idm(idm_cfg).to(device, memory_format=torch.channels_last)
        model.load_state_dict(tensors)
        return model.eval(), report
    train, test = WindowDataset(data, "train", k=3), WindowDataset(data, "test", k=3)
    model = train_supervised_idm(idm_cfg, train, starts, device, seed, progress)
    rep = score_supervised_idm(model, idm_cfg, test, seed + 1, device)
    report = {
        "idm": settings,
        "idm_test_accuracy": rep["accuracy"],
        "idm_test_balanced_accuracy": rep["balanced_accuracy"],
    }
    save_tensors(path, model.state_dict(), report)
    write_json(out / "supervised_idm.json", report)
    return model.eval(), report


def idm_labels_bc(
    cfg: BCConfig,
    idm_cfg: SupervisedIDMConfig,
    data: Path,
    out: Path,
    labels: int,
    labels_from: Path | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Baseline (b): a supervised IDM fit on K labels labels the train windows BC draws
    (:class:`IDMActionTargets`) -> BC."""
    starts = labelled_starts(data, labels, cfg.seed, labels_from, purpose="baseline (b)")
    out, device = start_run(out, cfg.threads, cfg.device)
    # the IDM once, by rank 0 under torchrun; then every rank reads it from out
    distributed.on_main(
        lambda: fit_labelling_idm(idm_cfg, data, out, starts, cfg.seed, device, progress)[1]
    )
    idm, report = fit_labelling_idm(idm_cfg, data, out, starts, cfg.seed, device, progress)
    summary = train_action_bc(
        cfg,
        data,
        out,
        targets=IDMActionTargets(idm, idm_cfg, starts, device, cfg.label_smoothing),
        run_config={
            "baseline": "idm-labels-bc",
            "labels": len(starts),
            "supervised_idm": report,
            "command": command,
        },
        progress=progress,
        desc=f"bc on idm labels ({len(starts)})",
    )
    record_labelled(out, data, starts, cfg.seed)
    return {**summary, **{k: v for k, v in report.items() if k != "idm"}}


def ppo_from_scratch(
    cfg: ExpertConfig,
    game: str,
    out: Path,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Baseline (c): PPO from scratch on ``game`` with the whole of ``cfg`` (its ``game``
    replaced).

    Its preset (``preset(ExpertConfig, "baseline")``) is Procgen's PPO settings (lr 5e-4,
    entropy 0.01) with the policy's IMPALA-CNN on LAPO's stage-3 rollout of 64 envs x 64 steps,
    so both methods update as often per frame. One PPO (:mod:`lapo.rl.ppo`) through
    :func:`lapo.rl.expert.train_expert`: the run folder is a ``ppo-expert`` policy.
    """
    return train_expert(dataclasses.replace(cfg, game=game), out, progress, command=command)
