"""Stage 1 mechanics at toy sizes on real Procgen frames: shapes, schedule, files, resume."""

import dataclasses
import functools
import json
import math
import sys

import numpy as np
import pytest
import torch
from cores import TORCH_THREADS
from margins import accuracy_se, assert_margin

from lapo.checkpoint import load_tensors
from lapo.cli import main
from lapo.config import LAMConfig, QuantizerConfig
from lapo.config import preset as config_preset
from lapo.data.collect import collect
from lapo.data.dataset import WindowDataset
from lapo.models.lam import LatentActionModel
from lapo.schedules import lr_scale
from lapo.stages.lam import (
    lam_loss,
    plain_lam_loss,
    shuffled_latent_loss,
    train_lam,
    variance_hinge,
)
from lapo.stages.lam_probe import probe_lam

preset = functools.partial(config_preset, LAMConfig)
TOY = dict(
    idm_width=1,
    wm_base=4,
    batch_size=8,
    eval_every=4,
    probe_every=8,
    probe_train=256,
    probe_test=128,
    test_windows=64,  # the fixed test windows each evaluation scores
    threads=1,
    quantizer=QuantizerConfig(num_codebooks=1, latents_per_codebook=2, code_dim=4, num_entries=8),
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("lam") / "coinrun"
    collect(
        "coinrun",
        "random",
        1200,
        out,
        test_frames=400,
        num_envs=4,
        chunk_frames=256,
        progress=False,
    )
    return out


def test_paper_preset_matches_the_notes():
    cfg = preset("paper")
    assert (cfg.idm_width, cfg.wm_base, cfg.batch_size, cfg.steps) == (4, 24, 128, 50_000)
    assert (cfg.learning_rate, cfg.grad_clip) == (3e-4, 2.0)
    q = cfg.quantizer
    assert (q.num_codebooks, q.latents_per_codebook, q.code_dim, q.num_entries) == (2, 4, 16, 64)
    assert (q.commitment_cost, q.decay, q.latent_dim) == (0.05, 0.999, 128)
    # the reference's quantiser: counts from zero, stored smoothed, no restarts
    assert q.reference_counts and q.restart_unused_steps == 0
    assert (cfg.idm_lookahead, cfg.aug_shift, cfg.wm_target) == (1, 0, "pixels")


def test_cpu_preset_restarts_codes_amplifies_differences_and_weighs_changed_pixels():
    cfg = preset("cpu")
    assert cfg.quantizer.restart_unused_steps == 100
    assert cfg.idm_differences and cfg.idm_difference_scale == 10.0
    assert cfg.changed_pixel_weight == 30.0 and cfg.changed_pixel_threshold == 0.0
    assert cfg.precision == "auto" and preset("paper").precision == "fp32"


def test_lr_schedule_by_hand():
    cfg = LAMConfig(steps=1050, warmup_steps=50, warmup_start=0.1, final_lr_scale=0.01)
    assert lr_scale(0, cfg, cfg.final_lr_scale) == pytest.approx(0.1)
    assert lr_scale(25, cfg, cfg.final_lr_scale) == pytest.approx(0.55)
    assert lr_scale(50, cfg, cfg.final_lr_scale) == pytest.approx(1.0)
    assert lr_scale(550, cfg, cfg.final_lr_scale) == pytest.approx(0.505)
    assert lr_scale(1050, cfg, cfg.final_lr_scale) == pytest.approx(0.01)


def test_shuffled_latent_loss_differs_only_through_the_latent():
    torch.manual_seed(0)
    model = LatentActionModel(LAMConfig(**{**TOY, "threads": 0})).eval()
    frames = torch.rand(4, 3, 3, 64, 64) - 0.5
    same = frames[:1].expand(4, -1, -1, -1, -1).contiguous()
    _, logs = plain_lam_loss(model, same)
    # identical windows have identical latents: shuffling them changes nothing
    assert shuffled_latent_loss(model, same) == pytest.approx(float(logs["wm_loss"]), rel=1e-5)
    _, logs = plain_lam_loss(model, frames)
    assert shuffled_latent_loss(model, frames) != pytest.approx(float(logs["wm_loss"]), rel=1e-7)


def test_loss_shapes_and_gradients_reach_both_models():
    cfg = LAMConfig(**{**TOY, "threads": 0})
    model = LatentActionModel(cfg)
    frames = torch.rand(4, 3, 3, 64, 64) - 0.5
    loss, logs = plain_lam_loss(model, frames)
    assert loss.shape == () and {"wm_loss", "vq_loss", "perplexity"} <= set(logs)
    loss.backward()
    assert model.idm.encoder.fc.weight.grad.abs().sum() > 0, "no gradient through the quantiser"
    assert model.world_model.head[-1].weight.grad.abs().sum() > 0


def test_train_writes_run_and_resumes_with_identical_state(data, tmp_path):
    run = tmp_path / "run"
    cfg = LAMConfig(steps=8, **TOY)
    train_lam(cfg, data, run, progress=False)
    for name in ("config.json", "lam.safetensors", "checkpoint.safetensors", "metrics.csv"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())
    _, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["step"] == 8
    untrained = json.loads((run / "untrained.json").read_text())
    baseline = untrained["probe"]
    assert untrained["test_wm_loss"] > 0
    assert baseline["n_train"] == 256 and baseline["n_test"] == 128
    # a longer budget continues from step 8 (restore itself: test_checkpoint.py)
    summary = train_lam(LAMConfig(steps=12, **TOY), data, run, progress=False)
    _, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["step"] == 12 and summary["steps"] == 12 and summary["stopped_by"] == "steps"
    # the untrained baseline is measured once, at step 0, and reported after a resume too
    assert summary["probe_untrained_accuracy"] == baseline["accuracy"]
    assert summary["test_wm_loss_shuffled_latent"] > 0
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [0, 4, 8, 12]  # step 0: the untrained model


def test_probe_command_reports_json(data, tmp_path, capsys):
    run = tmp_path / "run"
    train_lam(LAMConfig(steps=4, **TOY), data, run, progress=False)
    assert (
        main(
            [
                "lam",
                "probe",
                "--run",
                str(run),
                "--data",
                str(data),
                "--labels",
                "200",
                "--test",
                "100",
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    assert rep["labels"] == 200 and rep["n_test"] == 100
    assert rep["chance"] == pytest.approx(1 / 15)
    conf = np.array(rep["confusion"])
    assert conf.shape == (15, 15) and conf.sum() == 100
    assert rep["accuracy"] == pytest.approx(np.trace(conf) / 100)
    # more labels than windows: one line, exit 2
    assert main(["lam", "probe", "--run", str(run), "--data", str(data), "--labels", "999999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than the" in err


def test_probe_target_labels_each_window_with_the_chosen_action(data, tmp_path):
    from lapo.data.dataset import WindowDataset

    run = tmp_path / "run"
    train_lam(LAMConfig(steps=2, **TOY), data, run, progress=False)
    # the same windows as probe_lam draws: train first, then test, from one generator
    train, test = WindowDataset(data, "train", k=3), WindowDataset(data, "test", k=3)
    rng = np.random.default_rng(0)
    rng.choice(train.starts, 200, replace=False)
    actions = test.read(np.sort(rng.choice(test.starts, 100, replace=False)))["actions"]
    for target, name in enumerate(("a[t-1]", "a[t]", "a[t+1]")):
        rep = probe_lam(run, data, labels=200, test_windows=100, seed=0, target=target)
        # the confusion matrix's rows count the true labels: the chosen action of each window
        rows = np.array(rep["confusion"]).sum(1)
        assert rep["target"] == name
        assert np.array_equal(rows, np.bincount(actions[:, target], minlength=15))


def test_cli_overrides_apply_to_the_preset(data, tmp_path, capsys):
    run = tmp_path / "cli"
    args = [
        "lam",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--preset",
        "cpu",
        "--quiet",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--probe-every",
        "0",
        "--test-windows",
        "64",
        "--wm-base",
        "4",
        "--quantizer.kind",
        "fsq",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    cfg = json.loads((run / "config.json").read_text())["lam"]
    assert cfg["steps"] == 2 and cfg["wm_base"] == 4 and cfg["quantizer"]["kind"] == "fsq"
    assert cfg["idm_width"] == preset("cpu").idm_width  # untouched fields keep the preset's


def test_resume_with_another_model_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    train_lam(LAMConfig(steps=4, **TOY), data, run, progress=False)
    before = (run / "checkpoint.safetensors").read_bytes()
    args = [
        "lam",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--quiet",
        "--steps",
        "8",
        "--idm-width",
        "2",
    ]
    assert main(args) == 2
    assert "idm_width" in capsys.readouterr().err
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_plot_writes_every_promised_file(data, tmp_path, capsys):
    run = tmp_path / "run"
    train_lam(LAMConfig(steps=2, **TOY), data, run, progress=False)
    out = tmp_path / "plots"
    assert main(["lam", "plot", "--run", str(run), "--data", str(data), "--out", str(out)]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert set(files) == {"latents", "clusters", "predictions", "rollout"}
    from PIL import Image

    for path in files.values():
        with Image.open(path) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    with Image.open(files["rollout"]) as gif:
        # PIL merges identical consecutive frames into one longer frame: count time instead
        total = 0
        for i in range(gif.n_frames):
            gif.seek(i)
            total += gif.info["duration"]
        assert total == 48 * 100


@pytest.mark.slow
def test_resume_after_kill_gives_the_uninterrupted_result(data, tmp_path, kill_after_checkpoint):
    cmd = [sys.executable, "-m", "lapo.cli", "lam", "train", "--data", str(data), "--quiet"]
    toy = [
        "--idm-width", "1", "--wm-base", "4", "--batch-size", "8", "--steps", "40",
        "--eval-every", "4", "--probe-every", "0", "--threads", "1", "--test-windows", "64",
        "--quantizer.num-codebooks", "1", "--quantizer.num-entries", "8",
    ]  # fmt: skip
    straight = tmp_path / "straight"
    assert main(cmd[3:] + toy + ["--out", str(straight)]) == 0
    run = tmp_path / "killed"
    kill_after_checkpoint(
        cmd + toy + ["--out", str(run)], run / "checkpoint.safetensors", "step", 8
    )
    _, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["step"] < 40, "the kill came too late to test a resume"
    assert main(cmd[3:] + toy + ["--out", str(run)]) == 0
    # same weights, optimiser and codebooks as the run that was never interrupted
    a, _ = load_tensors(straight / "checkpoint.safetensors")
    b, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["step"] == 40 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(0, 41, 4))


def test_a_run_written_before_a_setting_existed_resumes_with_its_default(data, tmp_path):
    from lapo.checkpoint import CheckpointError, save_tensors

    cfg = LAMConfig(**{**TOY, "steps": 2, "eval_every": 2, "probe_every": 0})
    train_lam(cfg, data, tmp_path / "run", progress=False)
    # the checkpoint as an older version wrote it: without two settings added since
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    tensors, meta = load_tensors(ckpt)
    del meta["config"]["wm_action_everywhere"], meta["config"]["quantizer"]["reference_counts"]
    save_tensors(ckpt, tensors, meta)
    longer = dataclasses.replace(cfg, steps=4, eval_every=4)
    assert train_lam(longer, data, tmp_path / "run", progress=False)["steps"] == 4
    # a setting that was written and differs is still refused
    with pytest.raises(CheckpointError, match="learning_rate"):
        train_lam(dataclasses.replace(longer, steps=6, learning_rate=1e-2), data,
                  tmp_path / "run", progress=False)  # fmt: skip


def test_label_settings_bind_a_resume_only_when_stage1_uses_labels(data, tmp_path):
    from lapo.checkpoint import CheckpointError

    short = dict(TOY, steps=2, eval_every=2, probe_every=0)
    # a video-only run written when the default label weight was 0.01 resumes under today's
    train_lam(LAMConfig(**short, label_weight=0.01), data, tmp_path / "video", progress=False)
    longer = dict(short, steps=4, eval_every=4)
    assert train_lam(LAMConfig(**longer), data, tmp_path / "video", progress=False)["steps"] == 4
    # with labels the weight shapes the loss: a changed weight is refused
    train_lam(LAMConfig(**short, labels=16, label_weight=0.01), data, tmp_path / "labels",
              progress=False)  # fmt: skip
    with pytest.raises(CheckpointError, match="label_weight"):
        train_lam(LAMConfig(**longer, labels=16), data, tmp_path / "labels", progress=False)


REMEDIES = {
    "lookahead": dict(idm_lookahead=3),
    "shift": dict(aug_shift=4),
    "embedding": dict(wm_target="embedding"),
    "no_ignore": dict(wm_mask_past=1.0, latent_var_floor=0.01),
    "wm_differences": dict(idm_differences=True, idm_difference_scale=10.0, wm_differences=True),
    "wide_continuous": dict(quantizer=QuantizerConfig(kind="none", continuous_dim=512)),
    "action_everywhere": dict(wm_action_everywhere=True),
    "residual": dict(wm_residual=True),
    "prev_latent": dict(wm_prev_latent=True),
    "decorrelation": dict(latent_decorrelation=1.0),
    "motion_compensation": dict(
        changed_pixel_weight=30.0,
        motion_compensation=True,
        idm_differences=True,
        idm_difference_scale=10.0,
        motion_compensate_idm=True,
    ),
    "prev_latent_embedding": dict(wm_prev_latent=True, wm_target="embedding"),
    "linear_features": dict(idm_linear_features=True),
    "camera_shift": dict(wm_camera_shift=True),
}


@pytest.mark.parametrize("linear", [False, True])
def test_linear_features_keep_the_latent_alive_where_the_last_relu_is_off(linear):
    # heist's collapse by hand: every pre-activation of the encoder's last layer negative
    cfg = LAMConfig(**TOY, idm_linear_features=linear)
    idm = LatentActionModel(cfg).idm
    with torch.no_grad():
        idm.encoder.fc.bias.fill_(-1e3)
        z, _ = idm(torch.rand(8, 3, 3, 64, 64) - 0.5)  # (8, A)
    spread = z.std(0).max().item()
    if linear:
        assert spread > 1e-3  # windows still get their own latents
    else:
        assert spread == 0.0  # the ReLU is off for every window: one latent for all


@pytest.mark.parametrize("name", list(REMEDIES))
def test_each_remedy_trains_with_the_stated_shapes(name, data, tmp_path):
    cfg = LAMConfig(**{**TOY, "steps": 3, "probe_every": 0, "eval_every": 3, **REMEDIES[name]})
    model = LatentActionModel(cfg)
    P = cfg.previous_frames  # windows from o[t-2] where the previous latent is needed
    T = P + cfg.idm_lookahead + 2
    frames = torch.rand(4, T, 3, 64, 64) - 0.5
    torch.manual_seed(0)
    loss, logs = lam_loss(model, frames, cfg)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert model.idm.encoder.fc.weight.grad.abs().sum() > 0
    with torch.no_grad():  # later stages see LAPO's three frames: (B, 3, 3, 64, 64) -> (B, A)
        z, q = model.idm(frames[:, P : P + 3])
    assert z.shape == q.z_q.shape == (4, cfg.quantizer.latent_dim)
    pred = model.predict(frames[:, P : P + 2], q.z_q)  # z[t-1] (wm_prev_latent): zeros
    assert pred.shape == ((4, 256) if "embedding" in name else (4, 3, 64, 64))
    summary = train_lam(cfg, data, tmp_path / name, progress=False)
    assert summary["steps"] == 3 and np.isfinite(summary["test_wm_loss"])


@pytest.mark.parametrize("threshold", [0.0, 0.2])
def test_changed_pixel_weight_by_hand(threshold):
    # o[t+1] = o[t] but for pixel (2, 3), moved by 0.1, and pixel (5, 7), moved by 0.3
    torch.manual_seed(0)
    frames = torch.rand(2, 3, 3, 64, 64) - 0.5
    frames[:, 2] = frames[:, 1]
    frames[:, 2, 0, 2, 3] += 0.1
    frames[:, 2, 1, 5, 7] -= 0.3
    weighted = LAMConfig(**TOY, changed_pixel_weight=4.0, changed_pixel_threshold=threshold)
    model = LatentActionModel(weighted).eval()  # eval: both losses see the same latents
    plain, _ = lam_loss(model, frames, dataclasses.replace(weighted, changed_pixel_weight=0.0))
    loss, _ = lam_loss(model, frames, weighted)
    with torch.no_grad():
        _, q = model.idm(frames)
        err = model.prediction_error(frames[:, :2], frames[:, 2], q.z_q)  # (2, 3, 64, 64)
    # each changed pixel's error (every channel) counts 1 + 4 times instead of once
    extra = err[:, :, 5, 7].sum() + (err[:, :, 2, 3].sum() if threshold < 0.1 else 0.0)
    assert loss.item() - plain.item() == pytest.approx(4.0 * extra.item() / err.numel(), rel=1e-4)


def test_loss_is_the_sum_of_its_named_terms():
    from lapo.stages.lam import action_head_loss, changed_pixel_weights, variance_hinge

    cfg = LAMConfig(**TOY, changed_pixel_weight=4.0, latent_var_floor=0.5, labels=16)
    cfg = dataclasses.replace(cfg, label_weight=0.5)
    torch.manual_seed(0)
    model = LatentActionModel(cfg).eval()  # eval: the codebook stays put between the calls
    frames = torch.rand(4, 3, 3, 64, 64) - 0.5
    lab = (torch.rand(3, 3, 3, 64, 64) - 0.5, torch.tensor([0, 7, 14]))
    loss, logs = lam_loss(model, frames, cfg, lab)
    with torch.no_grad():
        z, q = model.idm(frames)
        err = model.prediction_error(frames[:, :2], frames[:, 2], q.z_q)  # (4, 3, 64, 64)
        hinge = torch.relu(0.5 - z.var(0)).mean()  # each latent dimension's variance vs 0.5
        ce, _ = action_head_loss(model, *lab, aug_shift=0)
    assert torch.equal(variance_hinge(z, 0.5), hinge) and hinge > 0
    prediction = (err * changed_pixel_weights(frames, cfg)).mean()
    assert loss.item() == pytest.approx((prediction + q.loss + hinge + 0.5 * ce).item(), rel=1e-6)
    # the logs: the plain prediction error and each added term
    assert logs["wm_loss"].item() == pytest.approx(err.mean().item(), rel=1e-6)
    assert logs["latent_var_loss"] == hinge and logs["label_loss"] == ce


def test_changed_pixel_threshold_out_of_range_is_refused():
    from lapo.errors import ConfigError

    with pytest.raises(ConfigError, match="changed.pixel.threshold"):
        LAMConfig(changed_pixel_threshold=1.5)


def test_lookahead_shows_the_idm_a_later_frame_and_the_world_model_o_t_plus_1():
    from lapo.models.lam import idm_input

    cfg = LAMConfig(**{**TOY, "idm_lookahead": 4})
    frames = torch.arange(6.0).view(1, 6, 1, 1, 1).expand(64, 6, 3, 8, 8)  # frame i holds i
    torch.manual_seed(0)
    x = idm_input(frames, cfg)
    assert x.shape == (64, 3, 3, 8, 8)
    assert (x[:, 0] == 0).all() and (x[:, 1] == 1).all()
    assert set(x[:, 2, 0, 0, 0].tolist()) == {2.0, 3.0, 4.0, 5.0}  # o[t+k], k = 1..4
    plain = LAMConfig(**TOY)  # no lookahead, no shift (as in evaluation): o[t-1], o[t], o[t+1]
    assert torch.equal(idm_input(frames, plain), frames[:, :3])


def test_random_shift_moves_each_frame_by_its_own_offset():
    from lapo.models.augment import random_shift

    img = torch.zeros(8, 2, 1, 16, 16)
    img[..., 8, 8] = 1.0  # one bright pixel in the middle of every frame
    torch.manual_seed(0)
    out = random_shift(img, 3)
    pos = out.flatten(3).argmax(-1).squeeze(-1)  # (8, 2) flat positions of the pixel
    dy, dx = pos // 16 - 8, pos % 16 - 8
    assert dy.abs().max() <= 3 and dx.abs().max() <= 3
    assert len(set(zip(dy.flatten().tolist(), dx.flatten().tolist(), strict=True))) > 4
    assert torch.equal(random_shift(img, 0), img)


def test_time_budget_stops_training_and_a_rerun_does_not_go_on(data, tmp_path):
    run = tmp_path / "timed"
    cfg = LAMConfig(**{**TOY, "steps": 10_000, "probe_every": 0, "max_minutes": 0.02})
    summary = train_lam(cfg, data, run, progress=False)
    assert 0 < summary["steps"] < 10_000 and summary["train_seconds"] >= 1.2
    assert summary["stopped_by"] == "max_minutes"
    again = train_lam(cfg, data, run, progress=False)
    assert again["steps"] == summary["steps"]
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert float(rows[-1]["train_seconds"]) >= 1.2


def test_a_step_spent_suspended_is_charged_the_previous_steps_time():
    import os
    import signal
    import time

    from lapo.runs import StepClock

    clock = StepClock(5.0)  # a resumed run: 5 s of steps already spent
    with clock:
        time.sleep(0.05)
    first = clock.seconds - 5.0
    assert 0.05 <= first < 0.5
    # a step during which the process was stopped (SIGSTOP, Ctrl-Z) and continued: the SIGCONT
    # that resumed it marks the step, which then costs what the step before it did
    with clock:
        os.kill(os.getpid(), signal.SIGCONT)
        time.sleep(0.6)
    assert clock.seconds == pytest.approx(5.0 + 2 * first)
    with clock:  # the next step is timed again
        time.sleep(0.01)
    assert 0.01 <= clock.seconds - (5.0 + 2 * first) < 0.3


def test_labelled_and_unlabelled_batches_both_reach_the_gradient():
    from lapo.envs import NUM_ACTIONS

    cfg = LAMConfig(**{**TOY, "labels": 16, "label_weight": 0.5})
    torch.manual_seed(0)
    model = LatentActionModel(cfg).eval()  # eval: the codebook stays put between the calls
    frames = torch.rand(4, 3, 3, 64, 64) - 0.5
    lab = (torch.rand(3, 3, 3, 64, 64) - 0.5, torch.tensor([0, 7, 14]))
    assert NUM_ACTIONS == 15

    def grad(unlabelled: bool, labelled: bool) -> torch.Tensor:
        model.zero_grad()
        if unlabelled:
            loss, _ = lam_loss(model, frames, cfg, lab if labelled else None)
        else:  # the labelled term alone, by hand
            z, _ = model.idm(lab[0])
            loss = 0.5 * torch.nn.functional.cross_entropy(model.action_head(z), lab[1])
        loss.backward()
        return model.idm.encoder.fc.weight.grad.clone()

    both, video, labels = grad(True, True), grad(True, False), grad(False, True)
    assert video.abs().sum() > 0 and labels.abs().sum() > 0
    torch.testing.assert_close(both, video + labels)  # removing either changes the gradient
    _, logs = lam_loss(model, frames, cfg, lab)
    assert 0 <= logs["label_accuracy"] <= 1 and logs["label_loss"] > 0


def test_stage1_with_labels_uses_exactly_the_recorded_windows(data, tmp_path, monkeypatch):
    import lapo.stages.lam_data as lam_data
    from lapo.data.labels import read_labelled

    seen = []
    real = lam_data.labelled_batch

    def spy(ds, starts, cfg, rng, device):
        seen.append(np.asarray(starts).copy())
        x, y = real(ds, starts, cfg, rng, device)
        return x, y

    monkeypatch.setattr(lam_data, "labelled_batch", spy)
    run = tmp_path / "labelled"
    cfg = LAMConfig(**{**TOY, "steps": 3, "probe_every": 0, "labels": 20, "labels_seed": 3})
    train_lam(cfg, data, run, progress=False)
    recorded = read_labelled(run)
    assert len(recorded) == 20 and len(seen) == 3
    assert all(np.array_equal(s, recorded) for s in seen)
    # the draw is decode offline's: the same seed gives the same windows there
    from lapo.data.labels import labelled_starts

    assert np.array_equal(labelled_starts(data, 20, 3), recorded)
    # each labelled batch holds windows from those starts, with their true middle actions
    from lapo.data.dataset import DeviceWindows, WindowDataset

    ds = WindowDataset(data, "train", k=3)
    cpu = torch.device("cpu")
    x, y = real(DeviceWindows(ds, cpu), recorded, cfg, np.random.default_rng(0), cpu)
    assert x.shape == (cfg.batch_size // 4, 3, 3, 64, 64) and y.shape == (cfg.batch_size // 4,)
    assert set(y.tolist()) <= set(ds.arrays["actions"][recorded + 1].tolist())


def test_stage1_labels_bad_input_is_one_line(data, tmp_path, capsys):
    base = ["lam", "train", "--data", str(data), "--quiet", "--steps", "1", "--probe-every", "0"]
    assert main(base + ["--out", str(tmp_path / "a"), "--labels", "999999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than the" in err
    assert main(base + ["--out", str(tmp_path / "b"), "--labels-from", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "labelled_windows.json" in err


@pytest.mark.slow
def test_labels_in_stage1_lift_the_probe_above_the_same_run_without(tmp_path):
    # coinrun: the camera follows the agent, so its move shifts the whole frame; with amplified
    # frame differences a supervised IDM learns it in a few hundred steps (docs/stage1.md)
    data = tmp_path / "coinrun"
    collect("coinrun", "random", 6_000, data, test_frames=8_192, num_envs=8, progress=False)
    base = {
        **TOY,
        "idm_differences": True,
        "idm_difference_scale": 10.0,
        "steps": 200,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "eval_every": 200,
        "probe_every": 0,  # one probe of each run at the end, below (none of the untrained)
        "threads": TORCH_THREADS,
    }
    train_lam(LAMConfig(**base), data, tmp_path / "video", progress=False)
    labels = dict(labels=1_000, label_weight=1.0, label_batch=32)
    train_lam(LAMConfig(**base, **labels), data, tmp_path / "labels", progress=False)
    # the two probes are fit and tested apart: the s.e. of their difference is the root of the
    # sum of squares. Measured (an AMD EPYC with AVX512, float32, the probes during training):
    # 0.163 against 0.108, 10.2 s.e., at two torch threads; 0.165 against 0.108, 10.7 s.e., at
    # one (another path). This form, one thread of an AVX2-only EPYC: 0.159 against 0.097,
    # 11.9 s.e., in 165 s against 256 s for the form with probes during training beside it
    a, b = (probe_lam(tmp_path / r, data, 2_048, 8_192)["accuracy"] for r in ("labels", "video"))
    n = min(8_192, len(WindowDataset(data, "test", k=3)))
    se = math.hypot(accuracy_se(a, n), accuracy_se(b, n))
    assert_margin("probe with labels over without", a, b, se)


def test_head_report_scores_the_action_head_by_hand():
    from lapo.evaluation.probe import head_report, probe_windows

    cfg = LAMConfig(**{**TOY, "labels": 16})
    model = LatentActionModel(cfg)
    with torch.no_grad():  # latent dimension i (of 8) votes for action i
        model.action_head.weight.zero_()
        model.action_head.weight[:8, :8] = torch.eye(8)
        model.action_head.bias.zero_()
    z = torch.eye(8)[[0, 1, 2, 5, 1, 1]]  # the head names actions 0, 1, 2, 5, 1, 1
    rep = head_report(model, z, np.array([0, 1, 2, 3, 0, 0]))
    # right on 3 of 6; recall: action 0 1/3, actions 1 and 2 1/1, action 3 0/1
    assert rep["head_accuracy"] == pytest.approx(0.5)
    assert rep["head_balanced_accuracy"] == pytest.approx((1 / 3 + 1 + 1 + 0) / 4)
    # the probe reports the head beside itself, and only for a model that has one
    rng = np.random.default_rng(0)
    windows = lambda n: {  # noqa: E731
        "obs": rng.integers(0, 256, (n, 3, 64, 64, 3), dtype=np.uint8),
        "actions": rng.integers(0, 15, (n, 3)),
    }
    train, test = windows(32), windows(16)
    cpu = torch.device("cpu")
    assert "head_accuracy" in probe_windows(model, train, test, cpu, epochs=1)
    video = LatentActionModel(LAMConfig(**TOY))
    assert "head_accuracy" not in probe_windows(video, train, test, cpu, epochs=1)


def test_a_metrics_csv_with_fewer_columns_gets_the_new_header_on_resume(tmp_path):
    import csv

    from lapo.runs import CsvLog

    path = tmp_path / "metrics.csv"
    old = CsvLog(path, ["step", "loss"])
    old.write_dict({"step": 10, "loss": 0.5})
    old.write_dict({"step": 20, "loss": 0.4})
    old.close()
    new = CsvLog(path, ["step", "loss", "head_acc"], resume_at=10)
    new.write_dict({"step": 20, "loss": 0.3, "head_acc": 0.2})
    new.close()
    rows = list(csv.DictReader(path.open()))
    assert [r["step"] for r in rows] == ["10", "20"]  # the row after the resume point redone
    assert rows[0]["head_acc"] is None and rows[1]["head_acc"] == "0.2"


def test_variance_hinge_by_hand():
    # columns (0, 2) and (1, 1): unbiased variances 2 and 0; floor 1.5 -> relu(-0.5) = 0 and
    # relu(1.5) = 1.5, mean 0.75; the gradient pushes only the collapsed column apart
    z = torch.tensor([[0.0, 1.0], [2.0, 1.0]], requires_grad=True)
    loss = variance_hinge(z, 1.5)
    assert loss.item() == pytest.approx(0.75)
    loss.backward()
    assert z.grad[:, 0].abs().sum() == 0  # above the floor: no push
    assert variance_hinge(z, 0.0).item() == 0.0


def test_embedding_target_follows_the_encoder_at_rate_tau():
    # wm_target embedding: the target encoder moves tau of the way to the online one per step
    cfg = LAMConfig(**{**TOY, "wm_target": "embedding", "wm_target_tau": 0.25})
    wm = LatentActionModel(cfg).world_model
    with torch.no_grad():
        for p in wm.encoder.parameters():
            p.add_(1.0)
    before = [t.clone() for t in wm.target_encoder.parameters()]
    wm.update_target(cfg.wm_target_tau)
    for b, t, o in zip(
        before, wm.target_encoder.parameters(), wm.encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(t, b + 0.25 * (o - b))


def test_the_previous_latent_reaches_the_world_model_without_gradient_into_the_idm():
    cfg = LAMConfig(**{**TOY, "wm_prev_latent": True})
    torch.manual_seed(0)
    model = LatentActionModel(cfg)
    A = cfg.quantizer.latent_dim
    frames = torch.rand(4, 4, 3, 64, 64) - 0.5  # o[t-2], o[t-1], o[t], o[t+1]
    seen = []
    real_forward = model.world_model.forward

    def spy(context, latents):  # the world model's latent input (B, 2A): (z[t], z[t-1])
        seen.append(latents)
        return real_forward(context, latents)

    model.world_model.forward = spy
    lam_loss(model, frames, cfg)
    latents = seen[-1]
    assert latents.shape == (4, 2 * A)
    with torch.no_grad():  # the second half is z[t-1], the IDM's latent of o[t-2], o[t-1], o[t]
        _, q_prev = model.idm(frames[:, :3])
    torch.testing.assert_close(latents[:, A:], q_prev.z_q)

    def idm_gradient(half: slice) -> torch.Tensor:
        """The IDM's gradient of a loss that reads only one half of the world model's input."""
        model.zero_grad()
        lam_loss(model, frames, cfg)
        seen[-1][:, half].pow(2).sum().backward()
        grad = model.idm.encoder.fc.weight.grad
        return torch.zeros(()) if grad is None else grad.abs().sum()

    assert idm_gradient(slice(0, A)) > 0  # z[t]: the IDM learns through it
    assert idm_gradient(slice(A, 2 * A)) == 0  # z[t-1]: stop-gradient


def test_the_previous_latent_leaves_the_codebook_as_it_is():
    cfg = LAMConfig(**{**TOY, "wm_prev_latent": True})
    torch.manual_seed(0)
    model = LatentActionModel(cfg)  # training mode: the codebook's EMA moves with each z[t]
    frames = torch.rand(4, 4, 3, 64, 64) - 0.5
    before = {k: v.clone() for k, v in model.idm.quantizer.state_dict().items()}
    model.previous_latent(frames[:, :3])
    after = model.idm.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.idm.quantizer.training  # its mode is restored


def test_latent_decorrelation_is_the_mean_squared_cross_correlation_by_hand():
    from lapo.stages.lam import latent_decorrelation_loss

    torch.manual_seed(0)
    z, other = torch.randn(256, 6), torch.randn(256, 6)
    corr = torch.corrcoef(torch.cat([z, other], 1).T)[:6, 6:]  # (6, 6): z_i against other_j
    expected = corr.pow(2).mean()
    assert latent_decorrelation_loss(z, other).item() == pytest.approx(expected.item(), rel=1e-4)
    # a latent that repeats the previous one, dimension by dimension: each of the A diagonal
    # pairs correlates fully, so at least 1/A
    assert latent_decorrelation_loss(z, 3 * z + 1).item() >= 1 / 6 - 1e-4


def test_loss_with_the_previous_latent_and_motion_options_is_the_sum_of_its_named_terms():
    from lapo.models.motion import compensated_difference
    from lapo.stages.lam import latent_decorrelation_loss

    cfg = LAMConfig(**TOY, changed_pixel_weight=4.0, motion_compensation=True,
                    wm_prev_latent=True, latent_decorrelation=0.5)  # fmt: skip
    torch.manual_seed(0)
    model = LatentActionModel(cfg).eval()  # eval: the codebook stays put between the calls
    frames = torch.rand(4, 4, 3, 64, 64) - 0.5
    frames[:, 3] = torch.roll(frames[:, 2], (2, -3), dims=(-2, -1))  # the camera moves
    frames[:, 3, :, 10:14, 20:24] = 0.4  # and a sprite appears
    loss, logs = lam_loss(model, frames, cfg)
    with torch.no_grad():
        z_prev, q_prev = model.idm(frames[:, :3])
        z, q = model.idm(frames[:, 1:])
        err = model.prediction_error(frames[:, 1:3], frames[:, 3], q.z_q, q_prev.z_q)
        changed = compensated_difference(frames[:, 2], frames[:, 3]).abs().amax(1, keepdim=True)
        # against the shift only the sprite's 4x4 pixels changed
        assert ((changed > 0).sum((1, 2, 3)) == 16).all()
        prediction = (err * (1 + 4.0 * (changed > 0).float())).mean()
        shared = latent_decorrelation_loss(z, z_prev)
    assert shared > 0 and logs["latent_decorrelation_loss"] == shared
    expected = prediction + q.loss + 0.5 * shared
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["wm_loss"].item() == pytest.approx(err.mean().item(), rel=1e-6)


def test_motion_options_that_would_do_nothing_are_refused():
    from lapo.errors import ConfigError

    with pytest.raises(ConfigError, match="changed-pixel-weight"):
        LAMConfig(motion_compensation=True)
    with pytest.raises(ConfigError, match="idm-differences"):
        LAMConfig(motion_compensate_idm=True)


def test_probe_pair_reports_both_probes_on_the_same_windows(data, tmp_path, capsys):
    from lapo.data.dataset import WindowDataset

    run = tmp_path / "run"
    train_lam(LAMConfig(steps=2, **TOY), data, run, progress=False)
    args = ["lam", "probe", "--run", str(run), "--data", str(data), "--labels", "200",
            "--test", "100", "--pair"]  # fmt: skip
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    pair = rep["pair"]
    assert rep["n_test"] == pair["n_test"] == 100 and rep["n_train"] == pair["n_train"] == 200
    # both label the four-frame window o[t-2..t+1] with a[t], the action at o[t]
    train, test = WindowDataset(data, "train", k=4), WindowDataset(data, "test", k=4)
    rng = np.random.default_rng(0)
    rng.choice(train.starts, 200, replace=False)
    actions = test.read(np.sort(rng.choice(test.starts, 100, replace=False)))["actions"]
    rows = np.bincount(actions[:, 2], minlength=15)
    assert np.array_equal(np.array(rep["confusion"]).sum(1), rows)
    assert np.array_equal(np.array(pair["confusion"]).sum(1), rows)
    assert 0 <= pair["accuracy"] <= 1 and "pair" not in pair
