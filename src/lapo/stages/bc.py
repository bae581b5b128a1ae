"""Stage 2 and the behaviour-cloning baselines: a policy regressed from ``o[t]`` onto a target.

- Stage 2 (:func:`train_latent_bc`): the target is the frozen stage-1 IDM's continuous latent
  ``z[t]`` of the window ``o[t-1], o[t], o[t+1]``; loss MSE (:func:`latent_bc_loss`); no action
  labels are read.
- Baselines (:func:`train_action_bc`): the target is an action (a true label on a few
  windows, or a supervised IDM's action for each window); loss cross-entropy (:func:`action_bc_loss`).

Both share one loop, :func:`train_bc`, data-parallel under torchrun (:mod:`lapo.runs`). A run folder holds ``config.json`` (kind, network,
game, the data it came from, full config), ``policy.safetensors``, ``checkpoint.safetensors``
(resume), ``metrics.csv``, ``untrained.json`` (the baselines the test loss must beat) and
TensorBoard files in ``tb/``. A stage-2 run also holds ``idm.safetensors``: the frozen IDM,
so that decoding needs only this folder, and, where stage 1 was trained with labels, its
action head (``action_head.safetensors``), which offline decoding may start from.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lapo import distributed
from lapo.config import BCConfig
from lapo.data.checks import dataset_for
from lapo.data.dataset import DeviceWindows, WindowDataset
from lapo.errors import ConfigError
from lapo.models.frames import frames_to_float
from lapo.models.idm import IDM
from lapo.models.policy import build_network
from lapo.runkinds import (
    ACTION_HEAD_FILE,
    ACTION_POLICY,
    LATENT_POLICY,
    action_policy_spec,
    data_fields,
    latent_policy_spec,
    load_lam,
)
from lapo.runs import Run, StepClock, resolve_device
from lapo.schedules import lr_scale, set_lr


def latent_bc_loss(pred: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Stage 2's loss: MSE between the policy's latents ``(B, A)`` and the IDM's ``z (B, A)``."""
    return F.mse_loss(pred, z)


def action_bc_loss(
    logits: torch.Tensor, actions: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """The baselines' loss: cross-entropy of action logits ``(B, 15)`` against ``actions (B,)``,
    the target ``(1 - label_smoothing)`` on the action and ``label_smoothing / 15`` on each."""
    return F.cross_entropy(logits, actions, label_smoothing=label_smoothing)


def latent_head_loss(
    pred: torch.Tensor, z: torch.Tensor, head: nn.Linear, weight: float
) -> torch.Tensor:
    """Stage 2's loss with stage 1's action head: :func:`latent_bc_loss` plus ``weight`` x
    the cross-entropy of ``head`` (latent ``(B, A)`` -> logits ``(B, 15)``, frozen: no
    gradient reaches it) on the policy's latents ``pred (B, A)`` against its most likely
    action on the IDM's ``z (B, A)``."""
    with torch.no_grad():
        target = head(z).argmax(-1)  # (B,)
    logits = F.linear(pred, head.weight.detach(), head.bias.detach())  # (B, 15)
    return latent_bc_loss(pred, z) + weight * F.cross_entropy(logits.float(), target)


class LatentTargets:
    """Stage 2's target: the frozen IDM's continuous latent of each window
    (:func:`latent_bc_loss` on the test windows; in training too, or with stage 1's action
    ``head`` and ``head_weight`` > 0, :func:`latent_head_loss`)."""

    kind = "latent"

    def __init__(
        self,
        idm: IDM,
        device: torch.device,
        head: nn.Linear | None = None,
        head_weight: float = 0.0,
    ) -> None:
        self.idm = idm.to(device, memory_format=torch.channels_last).eval()
        self.device = device
        self.loss = self.test_loss = latent_bc_loss
        if head is not None and head_weight > 0:
            head = head.to(device).eval()
            self.loss = functools.partial(latent_head_loss, head=head, weight=head_weight)

    @torch.no_grad()
    def __call__(self, batch: dict) -> torch.Tensor:
        # (B, 3, 64, 64, 3) uint8 windows on the device -> (B, A) continuous latents
        return self.idm(frames_to_float(batch["obs"]))[0].float()

    def test_targets(self, batch: dict) -> torch.Tensor:
        return self(batch)


class ActionTargets:
    """The baselines' target: the middle frame's true action (:func:`action_bc_loss` with
    ``label_smoothing`` in training; the test loss is the plain cross-entropy); a subclass may
    compute another (baseline (b)'s supervised IDM). Test windows are always scored against
    the true actions."""

    kind = "action"

    def __init__(self, device: torch.device, label_smoothing: float = 0.0) -> None:
        self.device = device
        self.loss = functools.partial(action_bc_loss, label_smoothing=label_smoothing)
        self.test_loss = action_bc_loss

    def __call__(self, batch: dict) -> torch.Tensor:
        return self.test_targets(batch)

    def test_targets(self, batch: dict) -> torch.Tensor:
        y = np.ascontiguousarray(batch["actions"][:, 1])
        return torch.from_numpy(y).to(self.device, non_blocking=True)


Targets = LatentTargets | ActionTargets

BC_COLUMNS = ["step", "train_loss", "test_loss", "test_accuracy", "lr", "train_seconds"]


class BCTest:
    """Fixed test windows (drawn once from their own generator) and what a policy scores on
    them: the loss against the targets, and for actions the accuracy."""

    def __init__(
        self,
        test: WindowDataset,
        targets_fn: Targets,
        seed: int,
        device: torch.device,
        n: int = 1024,
    ):
        starts = test.draw(min(n, len(test)), np.random.default_rng(seed + 1))
        batch = DeviceWindows(test, device)(starts)
        self.obs = batch["obs"][:, 1]  # (N, 64, 64, 3) uint8
        self.targets_fn = targets_fn
        self.y = targets_fn.test_targets(batch)

    def metrics(self, model: nn.Module) -> dict:
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(self.obs[i : i + 256]) for i in range(0, len(self.obs), 256)])
        model.train()
        m = {"test_loss": self.targets_fn.test_loss(pred.float(), self.y).item()}
        if self.targets_fn.kind == "action":
            m["test_accuracy"] = (pred.argmax(-1) == self.y).float().mean().item()
        return m

    def untrained(
        self, model: nn.Module, train: DeviceWindows, starts: np.ndarray, rng: np.random.Generator
    ) -> dict:
        """The baselines the trained policy must beat: the untrained network, and for latents
        the best constant prediction (the mean latent of twice as many training windows as
        there are test windows, at most as many as there are; each rank encodes its share)."""
        m = self.metrics(model)
        if self.targets_fn.kind == "latent":
            chosen = rng.choice(starts, min(2 * len(self.y), len(starts)))
            total = self.targets_fn(train(distributed.local(chosen))).sum(0)  # (A,)
            mean = distributed.all_reduce_(total) / len(chosen)
            m["test_loss_mean_prediction"] = self.targets_fn.test_loss(
                mean.expand_as(self.y), self.y
            ).item()
        return m


def bc_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    targets_fn: Targets,
    cfg: BCConfig,
    run: Run,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One gradient step from this rank's windows' middle frames ``o[t]`` onto their targets:
    ``(loss, grad_norm)``, tensors read only at log steps."""
    obs = batch["obs"][:, 1]  # (B, 64, 64, 3) uint8 on the device
    with run.autocast():
        loss = targets_fn.loss(model(obs).float(), targets_fn(batch))
    optimizer.zero_grad(set_to_none=True)
    run.backward(loss, model)  # gradients of the global batch's loss
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach(), grad_norm


def train_bc(
    cfg: BCConfig,
    data: Path,
    out: Path,
    network: dict,
    targets_fn: Targets,
    train_starts: np.ndarray | None = None,
    run_config: dict | None = None,
    extra_files: dict[str, dict[str, torch.Tensor]] | None = None,
    progress: bool = True,
    desc: str = "stage 2",
) -> dict:
    """Regress ``network`` (a :func:`build_network` spec) from ``o[t]`` onto ``targets_fn``.

    ``train_starts``: the train windows allowed (default all); ``run_config`` is merged into
    ``config.json``; ``extra_files`` (name -> tensors) are written beside the policy.
    Resumes from ``out/checkpoint.safetensors``. Returns a summary with the final test loss
    and the untrained and constant-prediction baselines.
    """
    run_config = dict(run_config or {})
    kind = run_config.pop("kind", "bc")
    run = Run(out, kind, cfg, columns=BC_COLUMNS, total=cfg.steps, desc=desc,
              resumable=cfg.resumable(), compare={"network": network}, progress=progress)  # fmt: skip
    with run:
        train = WindowDataset(data, "train", k=3)
        windows = DeviceWindows(train, run.device, cfg.data_on_device)
        starts = train.starts if train_starts is None else np.asarray(train_starts, np.int64)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        model = run.prepare(build_network(network), "")
        optimizer = run.optimizer(torch.optim.AdamW, model.parameters(), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)  # fmt: skip
        start = run.resume(model, optimizer, rng)
        clock = StepClock(run.meta.get("train_seconds", 0.0))
        for name, tensors in (extra_files or {}).items():
            run.save(name, tensors)
        run.write_config("bc", **run_config, network=network, data=str(data),
                         train_windows=int(len(starts)))  # fmt: skip
        test = BCTest(
            WindowDataset(data, "test", k=3), targets_fn, cfg.seed, run.device, cfg.test_windows
        )
        baseline = run.baseline(lambda: test.untrained(model, windows, starts, rng))
        if start == 0:
            run.scalars(0, {"test/loss": baseline["test_loss"]})
            run.row({"step": 0, **baseline})
        last: dict = {}
        for step in range(start, cfg.steps):
            with clock:
                lr = cfg.learning_rate * lr_scale(step, cfg)
                set_lr(optimizer, lr)
                batch = windows(run.local(starts[rng.integers(0, len(starts), cfg.batch_size)]))
                loss, grad_norm = bc_step(model, optimizer, batch, targets_fn, cfg, run)
                done = step + 1
                log = done % 50 == 0 or done == cfg.steps
                evaluate = done % cfg.eval_every == 0 or done == cfg.steps
                if log or evaluate:
                    run.synchronize()  # the clock counts the device's work, not its queue
                    logs = run.floats({"loss": loss, "grad_norm": grad_norm})
            run.advance(1)
            if log:
                run.advance(0, loss=f"{logs['loss']:.4f}")
                run.scalars(done, {f"train/{k}": v for k, v in logs.items()} | {"train/lr": lr})
            if evaluate:
                last = test.metrics(model)
                run.scalars(done, {f"test/{k[5:]}": v for k, v in last.items()})
                run.row({"step": done, "train_loss": logs["loss"], **last, "lr": lr,
                         "train_seconds": round(clock.seconds, 2)})  # fmt: skip
                run.checkpoint(done, model, optimizer, rng, train_seconds=clock.seconds)
                run.save("policy.safetensors", model.state_dict(), {"step": done})
        if not last and (run.out / "metrics.csv").exists():
            last = test.metrics(model)
    return bc_summary(run, cfg, start, baseline, last)


def bc_summary(run: Run, cfg: BCConfig, start: int, baseline: dict, last: dict) -> dict:
    """What a BC command prints: steps, time, rate, the untrained baselines and test figures."""
    wall = run.wall_seconds()
    return {
        "out": str(run.out),
        "steps": cfg.steps,
        "wall_seconds": round(wall, 1),
        "samples_per_second": round((cfg.steps - start) * cfg.batch_size / max(wall, 1e-9), 1),
        **{f"untrained_{k}": v for k, v in baseline.items()},
        **last,
    }


def train_latent_bc(
    cfg: BCConfig,
    lam_run: Path,
    data: Path,
    out: Path,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Stage 2: behaviour-clone a latent policy from ``data`` onto stage-1 run ``lam_run``."""
    lam, lam_config = load_lam(lam_run)
    game = lam_config.get("game")
    manifest = dataset_for(data, f"stage-1 run {lam_run}", game)
    device = resolve_device(cfg.device)
    latent_dim = int(lam_config["latent_dim"])
    network = latent_policy_spec(latent_dim, cfg.width, cfg.arch)
    run_config = {
        "kind": LATENT_POLICY,
        **data_fields(manifest),
        "lam_run": str(lam_run),
        "lam": lam_config["lam"],
        "latent_dim": latent_dim,
        "command": command,
    }
    extra = {"idm.safetensors": lam.idm.state_dict()}
    if lam.action_head is not None:  # stage 1 with labels: offline decoding may start from it
        extra[ACTION_HEAD_FILE] = lam.action_head.state_dict()
    elif cfg.head_weight > 0:
        raise ConfigError(
            f"--head-weight {cfg.head_weight:g} needs stage 1's action head, and stage-1 run "
            f"{lam_run} was trained without --labels: train it with --labels K, or pass "
            "--head-weight 0"
        )
    return train_bc(
        cfg,
        data,
        out,
        network,
        LatentTargets(lam.idm, device, lam.action_head, cfg.head_weight),
        run_config=run_config,
        extra_files=extra,
        progress=progress,
        desc="stage 2",
    )


def train_action_bc(
    cfg: BCConfig,
    data: Path,
    out: Path,
    train_starts: np.ndarray | None = None,
    run_config: dict | None = None,
    progress: bool = True,
    desc: str = "bc",
    targets: ActionTargets | None = None,
) -> dict:
    """BC on action labels: the true actions of the ``train_starts`` windows (default all), or
    what ``targets`` computes for each batch (baseline (b)'s supervised IDM)."""
    manifest = dataset_for(data)
    network = action_policy_spec(cfg.width, cfg.arch)
    config = {
        "kind": ACTION_POLICY,
        **data_fields(manifest),
        **(run_config or {}),
    }
    return train_bc(
        cfg,
        data,
        out,
        network,
        targets or ActionTargets(resolve_device(cfg.device), cfg.label_smoothing),
        train_starts=train_starts,
        run_config=config,
        progress=progress,
        desc=desc,
    )
