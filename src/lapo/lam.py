"""Stage 1: the latent action model (LAM) = latent IDM + world model + bottleneck.

From windows ``o[t-1], o[t], o[t+1]`` alone, the IDM infers a latent action ``z[t]``; the world
model predicts ``o[t+1]`` from ``o[t-1], o[t]`` and the quantised latent. The only losses are
next-frame MSE and the quantiser's commitment term. The probe (latent -> true action, on
labelled windows) is tracked during training because a low world-model loss alone does not
mean useful latents (../shared/LAPO_NOTES.md).

A run folder holds ``config.json`` (the full config), ``lam.safetensors`` (IDM + world model
weights, for later stages), ``checkpoint.safetensors`` (+ optimiser, step, RNG: resume),
``metrics.csv`` and TensorBoard files in ``tb/``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lapo.checkpoint import (
    CheckpointError,
    load_tensors,
    read_json,
    refuse_changed_settings,
    restore_training_state,
    save_tensors,
    training_state,
    write_json,
)
from lapo.data.dataset import WindowDataset
from lapo.data.format import open_dataset
from lapo.envs import NUM_ACTIONS
from lapo.models.augment import random_shift
from lapo.models.idm import IDM
from lapo.models.quantizers import QuantizerConfig
from lapo.models.world_model import EmbeddingWorldModel, WorldModel, embedding_error
from lapo.runs import CsvLog, start_run


@dataclass
class LAMConfig:
    """Stage 1: latent inverse dynamics model + world model."""

    idm_width: int = 4
    """IMPALA-CNN width multiplier of the IDM."""
    wm_base: int = 24
    """Base channel width of the world model's U-Net."""
    idm_differences: bool = False
    """IDM also sees the frame differences o[t]-o[t-1], o[t+1]-o[t] (not in LAPO)."""
    idm_difference_scale: float = 1.0
    """Multiplier of the frame differences the IDM sees (with idm_differences): they are sparse
    and small next to the frames, and amplified the encoder finds motion in far fewer steps."""
    wm_differences: bool = False
    """The world model also sees o[t] - o[t-1] (times idm_difference_scale), so the motion it
    can extrapolate from its context is explicit and the latent need only carry the rest."""
    wm_residual: bool = False
    """World model predicts o[t+1] - o[t] and adds o[t] (not in LAPO)."""
    changed_pixel_weight: float = 0.0
    """Extra MSE weight on pixels that differ between o[t] and o[t+1]; 0 = plain MSE (LAPO)."""
    idm_lookahead: int = 1
    """The IDM sees o[t-1], o[t], o[t+k], k drawn per window from 1..this, while the world model
    still predicts o[t+1] (LAOM); 1 = LAPO. Later stages and the probe use k = 1."""
    aug_shift: int = 0
    """Shift each IDM input frame by its own random offset of up to this many pixels; 0 = none."""
    wm_target: str = "pixels"
    """pixels (LAPO's U-Net predicts o[t+1]) or embedding (an MLP predicts an EMA target
    encoder's embedding of o[t+1], as in LAOM; no decoder, so no prediction pictures)."""
    wm_target_tau: float = 0.01
    """embedding: EMA rate of the target encoder per step."""
    wm_mask_past: float = 0.0
    """Probability of hiding o[t-1] from the world model (so it cannot extrapolate motion and
    must read the latent); 0 = never (LAPO)."""
    latent_var_floor: float = 0.0
    """Hinge that keeps each latent dimension's batch variance above this floor (before the
    bottleneck), so the latent cannot collapse to a constant; 0 = off (LAPO)."""
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    learning_rate: float = 3e-4
    """Peak Adam learning rate."""
    warmup_steps: int = 50
    """Steps of linear warm-up from warmup_start x the peak rate."""
    warmup_start: float = 0.1
    """Learning-rate multiplier at step 0."""
    final_lr_scale: float = 0.01
    """Learning-rate multiplier reached (linearly) at the last step."""
    batch_size: int = 128
    """Windows per step."""
    steps: int = 50_000
    """Training steps."""
    grad_clip: float = 2.0
    """Gradient norm clip."""
    eval_every: int = 500
    """Steps between test world-model loss evaluations (and checkpoints)."""
    probe_every: int = 2_000
    """Steps between probe fits (needs actions in the data); 0 = never during training."""
    probe_train: int = 4_096
    """Labelled train windows for the probe during training."""
    probe_test: int = 2_048
    """Test windows for the probe during training."""
    labels: int = 0
    """K labelled train windows whose true actions train a linear head on the latent beside the
    video-only loss (LAOM, CLAM); 0 = video only (LAPO). The rest of the data is used without
    actions; the K windows are recorded in labelled_windows.json for stage 3 and the baselines."""
    labels_seed: int = 0
    """Seed that draws the K labelled windows (the same draw as decode offline and baselines)."""
    labels_from: str = ""
    """Use the labelled windows of this run folder (its labelled_windows.json) instead."""
    label_weight: float = 0.01
    """Weight of the labelled cross-entropy beside the prediction loss."""
    label_batch: int = 0
    """Labelled windows per step beside each unlabelled batch; 0 = a quarter of batch_size."""
    max_minutes: float = 0.0
    """Stop after this many minutes of training steps (probes and evaluations not counted); the
    lr schedule then runs on whichever of steps or time is further along. 0 = steps only."""
    seed: int = 0
    """Seed of initialisation and batch sampling."""
    threads: int = 0
    """torch CPU threads; 0 = all cores."""
    device: str = "auto"
    """cpu, cuda or auto."""

    @property
    def uses_labels(self) -> bool:
        """Stage 1 with a few action labels (``labels`` or ``labels_from`` given)."""
        return bool(self.labels or self.labels_from)


PRESETS: dict[str, LAMConfig] = {
    # ../shared/LAPO_NOTES.md: the published configuration, the reference's quantiser included
    "paper": LAMConfig(quantizer=QuantizerConfig(reference_counts=True)),
    # chosen by measurement on 2 CPU cores: see README "Stage 1"
    "cpu": LAMConfig(
        idm_width=1,
        wm_base=8,
        idm_differences=True,
        idm_difference_scale=10.0,
        learning_rate=1e-3,
        batch_size=32,
        steps=3_000,
        warmup_steps=50,
        eval_every=250,
        probe_every=500,
        quantizer=QuantizerConfig(restart_unused_steps=100),
    ),
}


# options a resumed run may change: the budget (which stretches the lr schedule) and the
# bookkeeping; anything that shapes the model or the optimisation must stay as it was
RESUMABLE_CHANGES = (
    "steps",
    "eval_every",
    "probe_every",
    "probe_train",
    "probe_test",
    "threads",
    "device",
    "max_minutes",
)


def preset(name: str) -> LAMConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])


def frames_to_float(obs: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, T, 64, 64, 3)`` -> float ``(B, T, 3, 64, 64)`` in [-0.5, 0.5]."""
    return obs.permute(0, 1, 4, 2, 3).float().div_(255.0).sub_(0.5)


def lam_config_from_dict(d: dict) -> LAMConfig:
    """The :class:`LAMConfig` that ``dataclasses.asdict`` turned into ``d`` (a run's config)."""
    c = dict(d)
    c["quantizer"] = QuantizerConfig(**c["quantizer"])
    return LAMConfig(**c)


def build_idm(cfg: LAMConfig) -> IDM:
    """The latent IDM of stage-1 configuration ``cfg`` (untrained)."""
    return IDM(
        cfg.quantizer,
        frames=3,
        width=cfg.idm_width,
        differences=cfg.idm_differences,
        difference_scale=cfg.idm_difference_scale,
    )


class LatentActionModel(nn.Module):
    """The IDM and the world model, trained together."""

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__()
        self.idm = build_idm(cfg)
        # with labels in stage 1: latent -> true action logits, trained on the K labelled windows
        self.action_head = (
            nn.Linear(cfg.quantizer.latent_dim, NUM_ACTIONS) if cfg.uses_labels else None
        )
        if cfg.wm_target not in ("pixels", "embedding"):
            raise ValueError(f"wm_target must be pixels or embedding, not {cfg.wm_target!r}")
        self.world_model: WorldModel | EmbeddingWorldModel
        # with wm_differences the context gains a third image, the amplified o[t] - o[t-1]
        self.wm_difference_scale = cfg.idm_difference_scale if cfg.wm_differences else 0.0
        context = 3 if cfg.wm_differences else 2
        if cfg.wm_target == "embedding":
            self.world_model = EmbeddingWorldModel(cfg.quantizer.latent_dim, context, cfg.idm_width)
        else:
            self.world_model = WorldModel(
                cfg.quantizer.latent_dim, context, base=cfg.wm_base, residual=cfg.wm_residual
            )

    @property
    def predicts_pixels(self) -> bool:
        return isinstance(self.world_model, WorldModel)

    def predict(self, context: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """The world model's prediction from ``o[t-1], o[t]`` ``(B, 2, 3, 64, 64)`` and the
        latent ``(B, A)``: ``o[t+1]`` ``(B, 3, 64, 64)``, or its embedding ``(B, F)``."""
        if self.wm_difference_scale:
            diff = (context[:, 1] - context[:, 0]) * self.wm_difference_scale
            context = torch.cat([diff[:, None], context], 1)  # (B, 3, 3, 64, 64), o[t] last
        return self.world_model(context, z_q)

    def prediction_error(
        self, context: torch.Tensor, target: torch.Tensor, z_q: torch.Tensor
    ) -> torch.Tensor:
        """Per-pixel squared error ``(B, 3, 64, 64)`` of the predicted ``o[t+1]``, or per-sample
        ``(B,)`` embedding error, for context ``(B, 2, 3, 64, 64)``, target ``(B, 3, 64, 64)``."""
        pred = self.predict(context, z_q)
        if self.predicts_pixels:
            return (pred - target) ** 2
        return embedding_error(pred, self.world_model.target(target))


def idm_input(frames: torch.Tensor, cfg: LAMConfig | None = None) -> torch.Tensor:
    """The IDM's frames ``(B, 3, 3, 64, 64)`` from a training window ``(B, K+2, 3, 64, 64)``:
    ``o[t-1], o[t], o[t+k]`` with k drawn per window from 1..K (``idm_lookahead``), each frame
    shifted by up to ``aug_shift`` pixels. Without ``cfg`` (evaluation): ``o[t-1], o[t], o[t+1]``."""
    if cfg is None or (cfg.idm_lookahead <= 1 and cfg.aug_shift <= 0):
        return frames[:, :3]
    x = frames[:, :3]
    if cfg.idm_lookahead > 1:
        B = frames.shape[0]
        k = torch.randint(1, cfg.idm_lookahead + 1, (B,), device=frames.device)
        far = frames[torch.arange(B, device=frames.device), 1 + k]  # (B, 3, 64, 64)
        x = torch.cat([frames[:, :2], far[:, None]], 1)
    return random_shift(x, cfg.aug_shift)


def lam_loss(
    model: LatentActionModel,
    frames: torch.Tensor,
    cfg: LAMConfig | None = None,
    labelled: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Next-frame prediction loss + commitment for float frames ``(B, K+2, 3, 64, 64)``
    (``K = cfg.idm_lookahead``; 3 frames without ``cfg``, which evaluates plain LAPO's loss).

    The world model predicts ``o[t+1]`` from ``o[t-1], o[t]`` (``o[t-1]`` hidden with probability
    ``wm_mask_past``) and the quantised latent of :func:`idm_input`. With
    ``changed_pixel_weight`` w, a pixel that differs between ``o[t]`` and ``o[t+1]`` weighs
    ``1 + w`` in the MSE: the agent's small sprite counts for more against the static
    background. ``latent_var_floor`` adds a hinge on each latent dimension's batch variance.
    ``labelled`` (frames ``(L, 3, 3, 64, 64)``, the middle frame's actions ``(L,)``) adds
    ``label_weight`` x the cross-entropy of the model's action head on their latents.
    Returns ``(loss, logs)``; ``logs`` holds the plain prediction error and codebook statistics.
    """
    z, q = model.idm(idm_input(frames, cfg))  # (B, A), z_q (B, A)
    context, target = frames[:, :2], frames[:, 2]
    if cfg is not None and cfg.wm_mask_past > 0:
        keep = torch.rand(len(frames), device=frames.device) >= cfg.wm_mask_past  # (B,)
        context = torch.stack([context[:, 0] * keep[:, None, None, None], context[:, 1]], 1)
    err = model.prediction_error(context, target, q.z_q)  # (B, 3, 64, 64) or (B,)
    wm_loss = err.mean()
    logs = {"wm_loss": wm_loss.item(), "vq_loss": q.loss.item(), **q.stats}
    loss = wm_loss + q.loss
    if cfg is None:
        return loss, logs
    if cfg.changed_pixel_weight > 0 and model.predicts_pixels:
        # (B, 1, 64, 64): 1 where any channel changed between o[t] and o[t+1]
        changed = (target != frames[:, 1]).any(1, keepdim=True).float()
        loss = (err * (1 + cfg.changed_pixel_weight * changed)).mean() + q.loss
    if cfg.latent_var_floor > 0:
        var_loss = F.relu(cfg.latent_var_floor - z.float().var(0)).mean()
        logs["latent_var_loss"] = var_loss.item()
        loss = loss + var_loss
    if labelled is not None and model.action_head is not None:
        x, actions = labelled
        z_l, _ = model.idm(random_shift(x, cfg.aug_shift))  # (L, A)
        logits = model.action_head(z_l)  # (L, 15)
        label_loss = F.cross_entropy(logits.float(), actions)
        logs["label_loss"] = label_loss.item()
        logs["label_accuracy"] = (logits.argmax(-1) == actions).float().mean().item()
        loss = loss + cfg.label_weight * label_loss
    return loss, logs


@torch.no_grad()
def shuffled_latent_loss(model: LatentActionModel, frames: torch.Tensor) -> float:
    """World-model MSE on ``(B, 3, 3, 64, 64)`` frames when each window gets *another*
    window's latent (a fixed cyclic shift of the batch).

    Its gap to the MSE with the window's own latent says how much the world model relies on
    the latent at all; a latent can be relied on and still not encode the action, which is
    what the probe measures.
    """
    _, q = model.idm(frames[:, :3])
    return model.prediction_error(frames[:, :2], frames[:, 2], q.z_q.roll(1, dims=0)).mean().item()


def lr_scale(step: int, cfg: LAMConfig, time_fraction: float = 0.0) -> float:
    """Warm-up from ``warmup_start`` to 1 over ``warmup_steps``, then linear to ``final_lr_scale``
    at ``steps`` or, if further along, at the fraction ``time_fraction`` of ``max_minutes``."""
    if step < cfg.warmup_steps:
        return cfg.warmup_start + (1 - cfg.warmup_start) * step / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    frac = max(frac, time_fraction)
    return 1.0 + (cfg.final_lr_scale - 1.0) * min(frac, 1.0)


@torch.no_grad()
def encode_windows(
    model: LatentActionModel, obs: np.ndarray, device: torch.device, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """IDM latents of uint8 windows ``(N, 3, 64, 64, 3)``: ``(z (N, A), z_q (N, A))`` on CPU."""
    was_training = model.training
    model.eval()
    zs, zqs = [], []
    for i in range(0, len(obs), batch):
        x = frames_to_float(torch.from_numpy(obs[i : i + batch]).to(device))
        z, q = model.idm(x)
        zs.append(z.float().cpu())
        zqs.append(q.z_q.float().cpu())
    model.train(was_training)
    return torch.cat(zs), torch.cat(zqs)


def probe_windows(
    model: LatentActionModel,
    train: dict,
    test: dict,
    device: torch.device,
    seed: int = 0,
    epochs: int = 30,
) -> dict:
    """Fit the probe on the IDM latents of ``train`` windows and score it on ``test`` windows.

    ``train``/``test`` are loader batches (``obs`` ``(N, 3, 64, 64, 3)``, ``actions`` ``(N, 3)``).
    The latent of window ``o[t-1], o[t], o[t+1]`` is labelled with the action taken at ``o[t]``
    (the one that led to ``o[t+1]``): the middle frame's action.
    """
    from lapo.probe import fit_probe

    ztr, _ = encode_windows(model, train["obs"], device)
    zte, _ = encode_windows(model, test["obs"], device)
    return fit_probe(
        ztr,
        torch.from_numpy(train["actions"][:, 1]),
        zte,
        torch.from_numpy(test["actions"][:, 1]),
        seed=seed,
        epochs=epochs,
    )


def labelled_batch(
    ds: WindowDataset, starts: np.ndarray, cfg: LAMConfig, rng: np.random.Generator, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A mini-batch of the K labelled windows: float frames ``(L, 3, 3, 64, 64)`` and the
    middle frame's actions ``(L,)``, ``L = label_batch`` (a quarter of the batch if 0)."""
    n = cfg.label_batch or max(cfg.batch_size // 4, 1)
    batch = ds.read(np.sort(rng.choice(starts, n, replace=len(starts) < n)))
    x = frames_to_float(torch.from_numpy(batch["obs"]).to(device))
    return x, torch.from_numpy(batch["actions"][:, 1]).to(device)


def train_lam(
    cfg: LAMConfig, data: Path, out: Path, progress: bool = True, command: str | None = None
) -> dict:
    """Train stage 1 on the dataset ``data`` into ``out``; resumes from its checkpoint."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from lapo.data.labels import labelled_starts, write_labelled

    out, device = start_run(out, cfg.threads, cfg.device)
    manifest = open_dataset(data).manifest
    # training windows reach o[t+K] for the IDM's lookahead; test windows are LAPO's three frames
    train = WindowDataset(data, "train", k=cfg.idm_lookahead + 2)
    test = WindowDataset(data, "test", k=3)
    probe_source = WindowDataset(data, "train", k=3) if cfg.idm_lookahead > 1 else train
    has_actions = bool(manifest.get("has_actions"))
    labelled_windows = None
    if cfg.uses_labels:
        starts = labelled_starts(
            data,
            cfg.labels,
            cfg.labels_seed,
            Path(cfg.labels_from) if cfg.labels_from else None,
            purpose="stage 1 with --labels",
        )
        write_labelled(out, data, starts, cfg.labels_seed)
        labelled_windows = probe_source, starts  # three-frame windows, like the probe's
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    # channels-last runs the convolutions ~1.4x faster on CPU (benchmarks/stage1_speed.py)
    model = LatentActionModel(cfg).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    start, train_seconds = 0, 0.0  # seconds spent in training steps, across resumptions
    ckpt = out / "checkpoint.safetensors"
    if ckpt.exists():
        tensors, meta = load_tensors(ckpt)
        refuse_changed_settings(ckpt, meta["config"], dataclasses.asdict(cfg), RESUMABLE_CHANGES)
        restore_training_state(tensors, meta, model, optimizer, rng)
        start, train_seconds = meta["step"], meta.get("train_seconds", 0.0)
    run_config = {
        "kind": "lam",
        "lam": dataclasses.asdict(cfg),
        "latent_dim": cfg.quantizer.latent_dim,
        "data": str(data),
        "game": manifest.get("game"),
        "command": command,
    }
    write_json(out / "config.json", run_config)

    # fixed windows for the test loss and the probe, drawn once from their own generator
    fixed = np.random.default_rng(cfg.seed + 1)
    test_batch = test.sample(min(512, len(test)), fixed)
    if has_actions and cfg.probe_every > 0:
        probe_tr = probe_source.sample(cfg.probe_train, fixed)
        probe_te = test.sample(cfg.probe_test, fixed)

    writer = SummaryWriter(str(out / "tb"))
    log = CsvLog(
        out / "metrics.csv",
        [
            "step",
            "train_wm_loss",
            "test_wm_loss",
            "test_wm_loss_shuffled",
            "perplexity",
            "probe_acc",
            "probe_balanced_acc",
            "train_seconds",
        ],
        resume_at=start,
    )

    def test_losses() -> tuple[float, float]:
        """Test world-model MSE with each window's own latent and with shuffled latents."""
        model.eval()
        with torch.no_grad():
            x = frames_to_float(torch.from_numpy(test_batch["obs"]).to(device))
            _, test_logs = lam_loss(model, x)
            shuffled = shuffled_latent_loss(model, x)
        model.train()
        return test_logs["wm_loss"], shuffled

    last: dict = {}
    baseline_path = out / "untrained.json"
    if start == 0:
        # the untrained model is the baseline: random features of three frames already carry
        # some action information, so the probe must beat this, not only chance
        wm, shuffled = test_losses()
        baseline = {"test_wm_loss": wm, "test_wm_loss_shuffled_latent": shuffled, "probe": None}
        if has_actions and cfg.probe_every > 0:
            baseline["probe"] = probe_windows(model, probe_tr, probe_te, device, seed=cfg.seed)
            writer.add_scalar("probe/accuracy", baseline["probe"]["accuracy"], 0)
            writer.add_scalar("probe/balanced_accuracy", baseline["probe"]["balanced_accuracy"], 0)
        writer.add_scalar("test/wm_loss", wm, 0)
        writer.add_scalar("test/wm_loss_shuffled_latent", shuffled, 0)
        write_json(baseline_path, baseline)
        p = baseline["probe"] or {}
        log.write(
            [0, "", wm, shuffled, "", p.get("accuracy", ""), p.get("balanced_accuracy", ""), 0.0]
        )
    if baseline_path.exists():
        baseline = read_json(baseline_path)
        last["test_wm_loss_untrained"] = baseline["test_wm_loss"]
        if baseline["probe"]:
            last["probe_untrained_accuracy"] = baseline["probe"]["accuracy"]
    bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=not progress, desc="stage 1")
    budget = cfg.max_minutes * 60
    done = start
    t0 = time.time()
    try:
        for step in range(start, cfg.steps):
            if budget and train_seconds >= budget:
                break
            t_step = time.perf_counter()
            for g in optimizer.param_groups:
                g["lr"] = cfg.learning_rate * lr_scale(
                    step, cfg, train_seconds / budget if budget else 0.0
                )
            obs = torch.from_numpy(train.sample(cfg.batch_size, rng)["obs"]).to(device)
            labelled = None
            if labelled_windows is not None:
                labelled = labelled_batch(*labelled_windows, cfg, rng, device)
            loss, logs = lam_loss(model, frames_to_float(obs), cfg, labelled)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if not model.predicts_pixels:
                model.world_model.update_target(cfg.wm_target_tau)
            train_seconds += time.perf_counter() - t_step
            bar.update(1)

            done = step + 1
            # the last step: the step budget, or the time budget about to run out
            final = done == cfg.steps or bool(budget and train_seconds >= budget)
            if done % 50 == 0 or final:
                for k, v in logs.items():
                    writer.add_scalar(f"train/{k}", v, done)
                writer.add_scalar("train/grad_norm", float(grad_norm), done)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], done)
                bar.set_postfix(
                    wm=f"{logs['wm_loss']:.4f}",
                    **({"ppl": f"{logs['perplexity']:.1f}"} if "perplexity" in logs else {}),
                    refresh=False,
                )
            row = None
            if done % cfg.eval_every == 0 or final:
                wm, shuffled = test_losses()
                writer.add_scalar("test/wm_loss", wm, done)
                writer.add_scalar("test/wm_loss_shuffled_latent", shuffled, done)
                last["test_wm_loss"] = wm
                last["test_wm_loss_shuffled_latent"] = shuffled
                row = [
                    done,
                    logs["wm_loss"],
                    wm,
                    shuffled,
                    logs.get("perplexity"),
                    "",
                    "",
                    round(train_seconds, 2),
                ]
            if has_actions and cfg.probe_every > 0 and (done % cfg.probe_every == 0 or final):
                rep = probe_windows(model, probe_tr, probe_te, device, seed=cfg.seed)
                writer.add_scalar("probe/accuracy", rep["accuracy"], done)
                writer.add_scalar("probe/balanced_accuracy", rep["balanced_accuracy"], done)
                last["probe_accuracy"] = rep["accuracy"]
                last["probe_balanced_accuracy"] = rep["balanced_accuracy"]
                if row is None:
                    row = [done, logs["wm_loss"], "", "", logs.get("perplexity"), "", "", ""]
                    row[7] = round(train_seconds, 2)
                row[5], row[6] = rep["accuracy"], rep["balanced_accuracy"]
            if row is not None:
                log.write(row)
            if done % cfg.eval_every == 0 or final:
                save_tensors(
                    ckpt,
                    *training_state(
                        model,
                        optimizer,
                        rng,
                        step=done,
                        train_seconds=train_seconds,
                        config=dataclasses.asdict(cfg),
                    ),
                )
                save_tensors(out / "lam.safetensors", model.state_dict(), {"step": done})
    finally:
        bar.close()
        writer.close()
        log.close()
    wall = time.time() - t0
    return {
        "steps": done,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "samples_per_second": round((done - start) * cfg.batch_size / max(wall, 1e-9), 1),
        **last,
    }


def load_lam(run: Path, device: str = "cpu") -> tuple[LatentActionModel, dict]:
    """Load a trained stage-1 model (eval mode) and its run config from ``run``."""
    run = Path(run)
    config = read_json(run / "config.json")
    if config.get("kind") != "lam":
        raise CheckpointError(f"{run} is not a stage-1 run (config kind {config.get('kind')!r})")
    model = LatentActionModel(lam_config_from_dict(config["lam"]))
    tensors, _ = load_tensors(run / "lam.safetensors")
    model.load_state_dict(tensors)
    return model.to(device).eval(), config


def probe_lam(
    run: Path,
    data: Path,
    labels: int = 4_096,
    test_windows: int = 8_192,
    seed: int = 0,
    epochs: int | None = None,
    untrained: bool = False,
) -> dict:
    """Fit the latent probe on ``labels`` labelled train windows of ``data``; score on test.

    ``epochs=None`` (the quick protocol, 30 epochs) refuses more labels than the data holds;
    with ``epochs`` given (the paper's protocol: 65,536 windows, 3 epochs) ``labels`` is capped
    at the train windows there are, and the report says how many were used. ``untrained``
    probes the run's architecture at its initialisation (seeded by ``seed``) instead: the
    baseline a trained IDM must beat, measured the same way.

    Returns accuracy, balanced accuracy, majority-class accuracy, chance and the confusion
    matrix (rows: true action, columns: predicted) of the continuous IDM latent.
    """
    from lapo.data.dataset import WindowDataset
    from lapo.data.format import DatasetError, open_dataset

    model, config = load_lam(run)
    if untrained:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LatentActionModel(lam_config_from_dict(config["lam"])).eval()
    manifest = open_dataset(data).manifest
    if not manifest.get("has_actions"):
        raise DatasetError(f"{data} has no actions: the probe needs a dataset with true actions")
    if config.get("game") and manifest.get("game") != config["game"]:
        raise DatasetError(
            f"{run} was trained on {config['game']} but {data} is {manifest.get('game')}: "
            "probe with data of the same game"
        )
    train, test = WindowDataset(data, "train", k=3), WindowDataset(data, "test", k=3)
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
    report = probe_windows(model, tr, te, torch.device("cpu"), seed, epochs or 30)
    return {
        "run": str(run),
        "data": str(data),
        "labels": labels,
        "epochs": epochs or 30,
        "seed": seed,
        **report,
    }
