"""Stage 1 (``lapo lam train``): the latent action model (LAM) = latent IDM + world model +
bottleneck, its loss and its training loop.

From windows ``o[t-1], o[t], o[t+1]`` alone, the IDM infers a latent action ``z[t]``; the world
model predicts ``o[t+1]`` from ``o[t-1], o[t]`` and the quantised latent. LAPO's losses are
next-frame MSE and the quantiser's commitment term (:func:`plain_lam_loss`); :func:`lam_loss`
adds the options of :class:`~lapo.config.LAMConfig` as named terms. The probe (latent -> true
action, on labelled windows) is tracked during training because a low world-model loss alone
does not mean useful latents (../shared/LAPO_NOTES.md).

The model is :mod:`lapo.models.lam`'s, the windows :mod:`lapo.stages.lam_data`'s, the probe
:mod:`lapo.evaluation.probe`'s; a finished run is read by :func:`lapo.runkinds.load_lam` and
probed by ``lapo lam probe`` (:mod:`lapo.stages.lam_probe`).

A run folder holds ``config.json`` (the full config), ``lam.safetensors`` (IDM + world model
weights, for later stages), ``checkpoint.safetensors`` (+ optimiser, step, RNG: resume),
``metrics.csv`` and TensorBoard files in ``tb/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lapo import distributed
from lapo.config import LAMConfig
from lapo.evaluation.probe import probe_windows
from lapo.models.augment import random_shift
from lapo.models.frames import frames_to_float
from lapo.models.lam import LatentActionModel, idm_input, split_window, wm_context
from lapo.models.motion import compensated_difference
from lapo.models.quantizers import QuantizerOutput
from lapo.runs import Run, StepClock
from lapo.schedules import lr_scale, set_lr
from lapo.stages.lam_data import Stage1Batches, Stage1Data, stage1_data


# -- the loss: a sum of named terms ----------------------------------------------------------
def changed_pixel_weights(frames: torch.Tensor, cfg: LAMConfig) -> torch.Tensor:
    """Per-pixel weights ``(B, 1, 64, 64)`` of the prediction error for windows
    ``(B, K+2, 3, 64, 64)``: ``1 + changed_pixel_weight`` where some channel moved by more than
    ``changed_pixel_threshold`` from ``o[t]`` to ``o[t+1]``, else 1. The agent's small sprite
    then counts for more against the static background. With ``motion_compensation`` the
    change is ``o[t+1] - shift(o[t])`` against the frames' global shift, so the background
    that a following camera moves does not count as changed."""
    if cfg.motion_compensation:
        diff = compensated_difference(frames[:, 1], frames[:, 2])  # (B, 3, 64, 64)
    else:
        diff = frames[:, 2] - frames[:, 1]
    change = diff.abs().amax(1, keepdim=True)  # (B, 1, 64, 64)
    changed = (change > cfg.changed_pixel_threshold).float()
    return 1 + cfg.changed_pixel_weight * changed


def variance_hinge(z: torch.Tensor, floor: float) -> torch.Tensor:
    """Mean over the latent's dimensions of ``relu(floor - batch variance)`` for ``z (B, A)``
    (the global batch's variance under torchrun): no dimension may collapse to a constant."""
    return F.relu(floor - distributed.batch_var(z.float())).mean()


def latent_decorrelation_loss(z: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
    """What ``z[t]`` shares with ``z[t-1]``, both ``(B, A)``: the mean over dimension pairs
    ``(i, j)`` of the squared correlation of ``z[t]_i`` with ``z[t-1]_j`` over the (global)
    batch, ``()`` in [0, 1]. A random policy's actions are independent from step to step, the
    agent's velocity is not: a latent that tracks the velocity pays for it."""

    def standardise(x: torch.Tensor) -> torch.Tensor:  # (B, A) -> (B, A), per dimension
        x = x.float()
        mean = distributed.global_sum(x.sum(0)) / (len(x) * distributed.world_size())
        return (x - mean) * torch.rsqrt(distributed.batch_var(x) + 1e-6)

    n = len(z) * distributed.world_size()
    cross = distributed.global_sum(standardise(z).T @ standardise(z_prev)) / (n - 1)  # (A, A)
    return cross.pow(2).mean()


def action_head_loss(
    model: LatentActionModel, z: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the action head on the continuous latents ``z (L, A)`` of labelled
    windows against the middle frames' ``actions (L,)``, and its accuracy (detached)."""
    logits = model.action_head(z)  # (L, 15)
    return F.cross_entropy(logits.float(), actions), (logits.argmax(-1) == actions).float().mean()


def idm_latents_with_labelled(
    model: LatentActionModel, x: torch.Tensor, labelled: torch.Tensor, aug_shift: int
) -> tuple[torch.Tensor, QuantizerOutput, torch.Tensor]:
    """The IDM on the training frames ``x (B, 3, 3, 64, 64)`` and the labelled windows
    ``(L, 3, 3, 64, 64)`` (shifted as the training frames are) in one pass of its encoder:
    ``(z (B, A), the quantiser's output on z, z of the labelled windows (L, A))``. Only the
    training latents reach the quantiser, so the codebook learns from video alone."""
    z_all = model.idm.encode(torch.cat([x, random_shift(labelled, aug_shift)]))  # (B+L, A)
    z, z_labelled = z_all[: len(x)], z_all[len(x) :]
    return z, model.idm.quantizer(z), z_labelled


def lam_loss(
    model: LatentActionModel,
    frames: torch.Tensor,
    cfg: LAMConfig,
    labelled: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Stage 1's training loss on float windows ``(B, P+K+2, 3, 64, 64)``
    (``K = cfg.idm_lookahead``, ``P = cfg.previous_frames``), the sum of:

    1. prediction: the world model's error on ``o[t+1]`` from :func:`wm_context` and the
       quantised latent of :func:`idm_input` (with ``wm_prev_latent``, and the previous
       step's, :meth:`~LatentActionModel.previous_latent`), each pixel weighted by
       :func:`changed_pixel_weights` when ``changed_pixel_weight`` > 0 (pixel targets only);
    2. the quantiser's commitment term;
    3. with ``latent_var_floor`` > 0, :func:`variance_hinge` on the continuous latents;
    4. with ``latent_decorrelation`` > 0, that weight x :func:`latent_decorrelation_loss`;
    5. with ``labelled`` (frames ``(L, 3, 3, 64, 64)``, the middle frame's actions ``(L,)``)
       and an action head, ``label_weight`` x :func:`action_head_loss`.

    With ``P = 1`` the windows start one frame earlier, at ``o[t-2]`` (:func:`split_window`).

    Returns ``(loss, logs)``; ``logs`` holds the plain (unweighted) prediction error, the
    commitment, codebook statistics and each added term as detached tensors (reading them waits
    for the device: log steps only). :func:`plain_lam_loss` is LAPO's loss alone.
    """
    before, frames = split_window(frames, cfg)  # o[t-2] (B, 3, 64, 64) or None
    head = labelled is not None and model.action_head is not None
    if head:  # one encoder pass over the training and the labelled windows
        z, q, z_labelled = idm_latents_with_labelled(
            model, idm_input(frames, cfg), labelled[0], cfg.aug_shift
        )  # (B, A), z_q (B, A), (L, A)
    else:
        z, q = model.idm(idm_input(frames, cfg))  # (B, A), z_q (B, A)
    z_prev = zq_prev = None
    if before is not None:  # z[t-1] of o[t-2], o[t-1], o[t], under stop-gradient
        z_prev, zq_prev = model.previous_latent(torch.cat([before[:, None], frames[:, :2]], 1))
    # the per-pixel squared error (B, 3, 64, 64), or per-sample embedding error (B,), once
    err = model.prediction_error(wm_context(frames, cfg), frames[:, 2], q.z_q, zq_prev)
    wm_loss = err.mean()
    logs = {"wm_loss": wm_loss.detach(), "vq_loss": q.loss.detach(), **q.stats}
    prediction = wm_loss
    if cfg.changed_pixel_weight > 0 and model.predicts_pixels:
        prediction = (err * changed_pixel_weights(frames, cfg)).mean()
    loss = prediction + q.loss
    if cfg.latent_var_floor > 0:
        hinge = variance_hinge(z, cfg.latent_var_floor)
        logs["latent_var_loss"] = hinge.detach()
        loss = loss + hinge
    if cfg.latent_decorrelation > 0:
        shared = latent_decorrelation_loss(z, z_prev)
        logs["latent_decorrelation_loss"] = shared.detach()
        loss = loss + cfg.latent_decorrelation * shared
    if head:
        label_loss, accuracy = action_head_loss(model, z_labelled, labelled[1])
        logs["label_loss"], logs["label_accuracy"] = label_loss.detach(), accuracy
        loss = loss + cfg.label_weight * label_loss
    return loss, logs


def plain_lam_loss(model: LatentActionModel, frames: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """LAPO's own loss on windows ``(B, 3, 3, 64, 64)``, nothing drawn: the world model's MSE
    on ``o[t+1]`` from ``o[t-1], o[t]`` and the latent of ``o[t-1], o[t], o[t+1]``, plus the
    commitment term. Returns ``(loss, logs)`` as :func:`lam_loss` does."""
    _, q = model.idm(frames[:, :3])  # z_q (B, A)
    wm_loss = model.prediction_error(frames[:, :2], frames[:, 2], q.z_q).mean()
    logs = {"wm_loss": wm_loss.detach(), "vq_loss": q.loss.detach(), **q.stats}
    return wm_loss + q.loss, logs


def lam_step(
    model: LatentActionModel,
    optimizer: torch.optim.Optimizer,
    frames: torch.Tensor,
    labelled: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: LAMConfig,
    run: Run,
) -> tuple[dict, torch.Tensor]:
    """One gradient step on this rank's slice of the batch, frames ``(B, P+K+2, 3, 64, 64)``
    (and a labelled batch): ``(logs, grad_norm)``, tensors read only at log steps."""
    with run.autocast():
        loss, logs = lam_loss(model, frames, cfg, labelled)
    optimizer.zero_grad(set_to_none=True)
    run.backward(loss, model)  # gradients of the global batch's loss
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    if not model.predicts_pixels:
        model.world_model.update_target(cfg.wm_target_tau)
    return logs, grad_norm


def train_lam(
    cfg: LAMConfig, data: Path, out: Path, progress: bool = True, command: str | None = None
) -> dict:
    """Train stage 1 on the dataset ``data`` into ``out``; resumes from its checkpoint. Under
    torchrun, data-parallel over the processes (see :mod:`lapo.runs`)."""
    run = Run(out, "lam", cfg, columns=LAM_COLUMNS, total=cfg.steps, desc="stage 1",
              resumable=cfg.resumable(), progress=progress)  # fmt: skip
    with run:
        d = stage1_data(cfg, data, run.out)
        batches = Stage1Batches(d, cfg, run)
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        model = run.prepare(LatentActionModel(cfg), "idm.encoder", "world_model")
        optimizer = run.optimizer(torch.optim.Adam, model.parameters(), lr=cfg.learning_rate)
        start = run.resume(model, optimizer, rng)
        clock = StepClock(run.meta.get("train_seconds", 0.0))  # in training steps, across resumes
        run.write_config("lam", latent_dim=cfg.quantizer.latent_dim, data=str(data),
                         game=d.manifest.get("game"), command=command)  # fmt: skip
        baseline = run.baseline(lambda: untrained_baseline(model, d, cfg, run.device))
        if start == 0:
            log_untrained(run, baseline)
        last: dict = {}
        budget, done = cfg.max_minutes * 60, start
        out_of_time = lambda: bool(budget and clock.seconds >= budget)  # noqa: E731
        for step in range(start, cfg.steps):
            if out_of_time():
                break
            with clock:
                time_fraction = clock.seconds / budget if budget else 0
                lr = cfg.learning_rate * lr_scale(step, cfg, cfg.final_lr_scale, time_fraction)
                set_lr(optimizer, lr)
                logs, grad_norm = lam_step(model, optimizer, *batches(rng), cfg, run)
                done = step + 1
                log, evaluate = done % 50 == 0, done % cfg.eval_every == 0
                if log or evaluate or done == cfg.steps:
                    run.synchronize()  # the clock counts the device's work, not its queue
            if budget:  # every rank stops at the same step
                clock.seconds = run.agree(clock.seconds)
            # the last step: the step budget, or the time budget about to run out
            final = done == cfg.steps or out_of_time()
            evaluate = evaluate or final
            probe = cfg.probe_every > 0 and (done % cfg.probe_every == 0 or final)
            probe = probe and d.probe_train is not None
            run.advance(1)
            if log or evaluate or probe:  # the step's one read of the device: log steps only
                logs = run.floats({**logs, "grad_norm": grad_norm})
            if log or final:
                log_train(run, done, logs, lr)
            if evaluate or probe:
                m = evaluate_lam(model, d, cfg, run.device, evaluate, probe)
                run.scalars(done, m)
                run.row(csv_row(done, m, clock.seconds, logs))
                last.update(m)
            if evaluate:
                run.checkpoint(done, model, optimizer, rng, train_seconds=clock.seconds)
                run.save("lam.safetensors", model.state_dict(), {"step": done})
    return lam_summary(done, start, clock.seconds, run.wall_seconds(), cfg, baseline, last)


# -- evaluation on test windows --------------------------------------------------------------
@torch.no_grad()
def shuffled_latent_loss(model: LatentActionModel, frames: torch.Tensor) -> float:
    """World-model MSE on ``(B, 3, 3, 64, 64)`` frames when each window gets *another*
    window's latent (a fixed cyclic shift of the batch).

    Its gap to the MSE with the window's own latent says how much the world model relies on
    the latent at all; a latent can be relied on and still not encode the action, which is
    what the probe measures.
    """
    return test_wm_losses(model, frames)[1]


@torch.no_grad()
def test_wm_losses(model: LatentActionModel, frames: torch.Tensor) -> tuple[float, float]:
    """World-model MSE on ``(B, 3, 3, 64, 64)`` frames with each window's own latent and with
    another window's (:func:`shuffled_latent_loss`), from one IDM pass. Windows of 4 frames
    start at ``o[t-2]``: the previous latent ``z[t-1]`` then reaches a world model that takes
    it (``wm_prev_latent``; only ``z[t]`` is shuffled)."""
    z_prev = None
    if frames.shape[1] == 4:
        _, z_prev = model.previous_latent(frames[:, :3])
        frames = frames[:, 1:]
    _, q = model.idm(frames[:, :3])
    context, target = frames[:, :2], frames[:, 2]
    own = model.prediction_error(context, target, q.z_q, z_prev).mean().item()
    other = q.z_q.roll(1, dims=0)
    shuffled = model.prediction_error(context, target, other, z_prev).mean().item()
    return own, shuffled


def evaluate_lam(
    model: LatentActionModel,
    d: Stage1Data,
    cfg: LAMConfig,
    device: torch.device,
    losses: bool = True,
    probe: bool = True,
) -> dict:
    """With ``losses``, the test world-model MSE with each window's own latent and with
    shuffled latents; with ``probe`` (and actions in the data), the probe's accuracies.
    Returns scalars by TensorBoard name."""
    out = {}
    if losses:
        model.eval()
        with torch.no_grad():
            x = frames_to_float(torch.from_numpy(d.test_batch["obs"]).to(device))
            own, shuffled = test_wm_losses(model, x)
            out["test/wm_loss"], out["test/wm_loss_shuffled_latent"] = own, shuffled
        model.train()
    if probe and d.probe_train is not None:
        rep = probe_windows(model, d.probe_train, d.probe_test, device, seed=cfg.seed)
        out["probe/accuracy"] = rep["accuracy"]
        out["probe/balanced_accuracy"] = rep["balanced_accuracy"]
        if "head_accuracy" in rep:
            out["head/accuracy"] = rep["head_accuracy"]
            out["head/balanced_accuracy"] = rep["head_balanced_accuracy"]
    return out


def untrained_baseline(
    model: LatentActionModel, d: Stage1Data, cfg: LAMConfig, device: torch.device
) -> dict:
    """The untrained model's test losses and probe report: random features of three frames
    already carry some action information, so training must beat this, not only chance."""
    m = evaluate_lam(model, d, cfg, device, probe=False)
    probe = None
    if d.probe_train is not None:
        probe = probe_windows(model, d.probe_train, d.probe_test, device, seed=cfg.seed)
    return {
        "test_wm_loss": m["test/wm_loss"],
        "test_wm_loss_shuffled_latent": m["test/wm_loss_shuffled_latent"],
        "probe": probe,
    }


# -- logging --------------------------------------------------------------------------------
LAM_COLUMNS = [
    "step",
    "train_wm_loss",
    "test_wm_loss",
    "test_wm_loss_shuffled",
    "perplexity",
    "probe_acc",
    "probe_balanced_acc",
    "train_seconds",
    "head_acc",
    "head_balanced_acc",
]


def csv_row(step: int, m: dict, train_seconds: float, logs: dict | None = None) -> dict:
    """A ``metrics.csv`` row from :func:`evaluate_lam`'s scalars and the step's ``logs``."""
    logs = logs or {}
    return {
        "step": step,
        "train_wm_loss": logs.get("wm_loss"),
        "test_wm_loss": m.get("test/wm_loss"),
        "test_wm_loss_shuffled": m.get("test/wm_loss_shuffled_latent"),
        "perplexity": logs.get("perplexity"),
        "probe_acc": m.get("probe/accuracy"),
        "probe_balanced_acc": m.get("probe/balanced_accuracy"),
        "train_seconds": round(train_seconds, 2),
        "head_acc": m.get("head/accuracy"),
        "head_balanced_acc": m.get("head/balanced_accuracy"),
    }


def log_train(run: Run, step: int, logs: dict, lr: float) -> None:
    """The progress bar's losses and the step's ``train/`` TensorBoard scalars."""
    ppl = {"ppl": f"{logs['perplexity']:.1f}"} if "perplexity" in logs else {}
    run.advance(0, wm=f"{logs['wm_loss']:.4f}", **ppl)
    run.scalars(step, {**{f"train/{k}": v for k, v in logs.items()}, "train/lr": lr})


def log_untrained(run: Run, baseline: dict) -> None:
    """Step 0's TensorBoard scalars and ``metrics.csv`` row: the untrained model's."""
    m = {"test/wm_loss": baseline["test_wm_loss"]}
    m["test/wm_loss_shuffled_latent"] = baseline["test_wm_loss_shuffled_latent"]
    if baseline["probe"]:
        m["probe/accuracy"] = baseline["probe"]["accuracy"]
        m["probe/balanced_accuracy"] = baseline["probe"]["balanced_accuracy"]
    run.scalars(0, m)
    run.row(csv_row(0, m, 0.0))


def lam_summary(
    done: int,
    start: int,
    train_seconds: float,
    wall: float,
    cfg: LAMConfig,
    baseline: dict,
    last: dict,
) -> dict:
    """What ``lapo lam train`` prints: steps, time, rate, the last test figures and probe, and
    the untrained model's."""
    summary = {
        "steps": done,
        # a time budget (--max-minutes) may end the run before cfg.steps
        "stopped_by": "steps" if done >= cfg.steps else "max_minutes",
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(wall, 1),
        "samples_per_second": round((done - start) * cfg.batch_size / max(wall, 1e-9), 1),
    }
    names = {
        "test/wm_loss": "test_wm_loss",
        "test/wm_loss_shuffled_latent": "test_wm_loss_shuffled_latent",
        "probe/accuracy": "probe_accuracy",
        "probe/balanced_accuracy": "probe_balanced_accuracy",
        "head/accuracy": "head_test_accuracy",
        "head/balanced_accuracy": "head_test_balanced_accuracy",
    }
    summary.update({names[k]: v for k, v in last.items() if k in names})
    if baseline:
        summary["test_wm_loss_untrained"] = baseline["test_wm_loss"]
        if baseline.get("probe"):
            summary["probe_untrained_accuracy"] = baseline["probe"]["accuracy"]
    return summary
